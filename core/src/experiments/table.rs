//! Plain-text tables for the terminal and CSV files, shared by the
//! experiments.

use std::path::Path;

use crate::Result;

/// Quotes a CSV field when it holds a comma, quote or line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line (with its `\n`) from fields.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields.iter().map(|f| csv_field(f.as_ref())).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

/// A number for a CSV file: full precision, `NaN` for non-finite values.
pub fn csv_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".into()
    }
}

/// Splits one CSV line into fields (quotes as written by [`csv_field`]).
pub fn parse_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\n', '\r']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// A table with aligned columns: a header, a rule, then the rows. The first
/// column is left-aligned, the others right-aligned (they hold numbers).
pub fn text_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let n = headers.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0usize; n];
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let fmt_row = |row: &[String]| {
        let cells: Vec<String> = (0..n)
            .map(|i| {
                let c = row.get(i).map_or("", String::as_str);
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        cells.join("  ").trim_end().to_string()
    };
    let mut out = fmt_row(headers);
    out.push('\n');
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * n.saturating_sub(1)));
    out.push('\n');
    for row in rows {
        out.push_str(&fmt_row(row));
        out.push('\n');
    }
    out
}

/// Shortens `s` to at most `max` characters, ending in `~` when cut.
pub fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// Writes `text` to `path` atomically and durably ([`crate::durable`]),
/// creating the folder.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::durable::write(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_with_quotes() {
        let fields = ["a photo, \"gray\" hair", "1.5", ""];
        let line = csv_line(&fields);
        assert_eq!(line, "\"a photo, \"\"gray\"\" hair\",1.5,\n");
        assert_eq!(parse_csv_line(&line), fields);
    }

    #[test]
    fn table_aligns_columns() {
        let t = text_table(
            &["prompt".into(), "x".into()],
            &[vec!["a".into(), "0.123".into()], vec!["longer".into(), "1".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "prompt      x");
        assert_eq!(lines[2], "a       0.123");
        assert_eq!(lines[3], "longer      1");
        assert_eq!(ellipsize("abcdef", 4), "abc~");
    }
}
