//! Plain-text tables for the terminal and CSV files, shared by the
//! experiments. CSV is written and read with the `csv` crate (RFC 4180: a
//! field with a comma, a quote or a line break is quoted), so whatever a
//! table writes reads back.

use std::path::Path;

use crate::{Error, Result};

/// One CSV record (ending in `\n`) from fields; a field is quoted only
/// when it must be.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(fields.iter().map(|f| f.as_ref())).expect("writing to memory cannot fail");
    let bytes = w.into_inner().expect("flushing to memory cannot fail");
    String::from_utf8(bytes).expect("the fields are text")
}

/// The records of a CSV text, each with the 1-based line it starts on
/// (the header is a record too). `file` names the text in errors.
pub fn read_csv(text: &str, file: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut out = Vec::new();
    for record in r.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            Error::Config(format!("'{}' line {line}: not a CSV record: {e}", file.display()))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        out.push((line, record.iter().map(str::to_string).collect()));
    }
    Ok(out)
}

/// A number for a CSV file: full precision, `NaN` for non-finite values.
pub fn csv_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".into()
    }
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
        let read = read_csv(&line, Path::new("t.csv")).expect("reads");
        assert_eq!(read, vec![(1, fields.map(String::from).to_vec())]);
    }

    #[test]
    fn a_label_with_a_comma_a_quote_and_a_newline_round_trips() {
        let label = "CLIP, \"ID\"\nand Seg";
        let text = csv_line(&["label", "value"]) + &csv_line(&[label, "0.5"]) + &csv_line(&["next", "1"]);
        let read = read_csv(&text, Path::new("t.csv")).expect("reads");
        let rows: Vec<Vec<String>> = read.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(
            rows,
            [
                vec!["label".to_string(), "value".into()],
                vec![label.into(), "0.5".into()],
                vec!["next".into(), "1".into()]
            ]
        );
        assert_eq!(read.iter().map(|(l, _)| *l).collect::<Vec<_>>(), [1, 2, 4], "records keep the line they start on");
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
