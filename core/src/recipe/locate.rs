//! Finding the line and column of a key path in YAML text.
//!
//! serde reports where a *syntax or type* error happened, but the checks
//! that run after deserialisation (an α range, a layer index, a plugin that
//! does not exist) only know the key path. This scanner maps a key path such
//! as `terms[2].weight` back to the text, for block-style YAML as recipes are
//! written. Flow collections (`[a, b]`, `{k: v}`) resolve to their key.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Parses `terms[2].params.classes` into segments.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(Seg::Key(name.to_string()));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                segs.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    segs
}

struct Line<'a> {
    /// 1-based line number.
    no: usize,
    /// Column (0-based) where the content starts, after any `- ` markers.
    indent: usize,
    /// True when the content follows a `- ` sequence marker.
    item: bool,
    content: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let mut indent = raw.len() - trimmed.len();
        let mut content = trimmed;
        let mut item = false;
        while let Some(rest) = content.strip_prefix("- ").or_else(|| (content == "-").then_some("")) {
            let skipped = content.len() - rest.trim_start().len();
            indent += skipped;
            content = rest.trim_start();
            item = true;
        }
        out.push(Line { no: i + 1, indent, item, content });
    }
    out
}

fn is_key(content: &str, key: &str) -> bool {
    let unquoted = content
        .strip_prefix('"')
        .and_then(|c| c.strip_prefix(key))
        .and_then(|c| c.strip_prefix('"'))
        .or_else(|| content.strip_prefix(key));
    unquoted.is_some_and(|rest| rest.trim_start().starts_with(':'))
}

/// The 1-based `(line, column)` of the deepest part of `path` found in
/// `text`; `None` when not even its first key is there.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let lines = lines(text);
    let (mut lo, mut hi) = (0, lines.len());
    let mut parent: Option<usize> = None; // indent of the enclosing key
    let mut found = None;
    for seg in path {
        let block_end = |from: usize, indent: usize| (from..hi).find(|&j| lines[j].indent <= indent).unwrap_or(hi);
        match seg {
            Seg::Key(key) => {
                let Some(first) = (lo..hi).find(|&j| parent.is_none_or(|p| lines[j].indent > p)) else {
                    break;
                };
                let level = lines[first].indent;
                let Some(j) = (first..hi)
                    .take_while(|&j| lines[j].indent >= level)
                    .find(|&j| lines[j].indent == level && is_key(lines[j].content, key))
                else {
                    break;
                };
                found = Some((lines[j].no, lines[j].indent + 1));
                parent = Some(lines[j].indent);
                lo = j + 1;
                hi = block_end(lo, lines[j].indent);
            }
            Seg::Index(i) => {
                let items: Vec<usize> = (lo..hi).filter(|&j| lines[j].item).collect();
                let Some(&first) = items.first() else { break };
                let level = lines[first].indent;
                let items: Vec<usize> = items.into_iter().filter(|&j| lines[j].indent == level).collect();
                let Some(&j) = items.get(*i) else { break };
                found = Some((lines[j].no, lines[j].indent - 1));
                let next = items.get(i + 1).copied().unwrap_or(hi);
                // The item's own keys start on its line, at its content indent.
                parent = Some(level.saturating_sub(1));
                lo = j;
                hi = next.min(block_end(j + 1, level.saturating_sub(1)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
prompt: gray hair
alpha:
  min: -3
  max: 3
terms:
  - plugin: clip
    weight: 1.0
  - plugin: segmentation
    weight: 0.1
    params:
      classes: [hair]
preview:
  every: 5
";

    fn at(path: &str) -> Option<(usize, usize)> {
        locate(TEXT, &parse_path(path))
    }

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(at("prompt"), Some((1, 1)));
        assert_eq!(at("alpha.max"), Some((4, 3)));
        assert_eq!(at("terms[0]"), Some((6, 3)));
        assert_eq!(at("terms[1].weight"), Some((9, 5)));
        assert_eq!(at("terms[1].params.classes"), Some((11, 7)));
        assert_eq!(at("terms[0].plugin"), Some((6, 5)));
        assert_eq!(at("preview.every"), Some((13, 3)));
    }

    #[test]
    fn falls_back_to_the_deepest_key_found() {
        assert_eq!(at("alpha.nope"), Some((2, 1)));
        assert_eq!(at("terms[7]"), Some((5, 1)));
        assert_eq!(at("missing"), None);
    }

    #[test]
    fn does_not_match_keys_of_a_sibling_block() {
        // `weight` of item 0 must not be found when asking for item 1's `every`.
        assert_eq!(at("terms[0].params"), Some((6, 3)));
    }

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path("terms[2].params"),
            vec![Seg::Key("terms".into()), Seg::Index(2), Seg::Key("params".into())]
        );
    }
}
