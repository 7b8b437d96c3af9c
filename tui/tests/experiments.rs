//! End-to-end tests of the report's experiments on the demo networks: each
//! runs the built `lsd-tui` binary in a temporary folder and checks that the
//! files it promises exist and hold sensible values (shapes, ranges, no NaN).

use std::path::Path;
use std::process::Command;

fn lsd_tui(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the lsd-tui binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lsd-tui {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// Reads a CSV file into its header and rows.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().map(split_csv);
    let header = lines.next().expect("a header line");
    (header, lines.collect())
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn number(s: &str) -> f64 {
    s.parse::<f64>().unwrap_or_else(|_| panic!("'{s}' is not a number"))
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn similarity_writes_table_heat_map_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = lsd_tui(
        dir.path(),
        &[
            "similarity",
            "--prompts",
            "a photo of a person with gray hair",
            "a photo of a person, smiling",
            "--seeds",
            "0..3,7",
            "--out",
            "sim",
        ],
    );
    assert!(stdout.contains("DEMO MODEL"), "the table must say it is a demo:\n{stdout}");
    assert!(stdout.contains("gray hair"));

    let out = dir.path().join("sim");
    let (header, rows) = read_csv(&out.join("similarity.csv"));
    assert_eq!(header, ["prompt", "seed 0", "seed 1", "seed 2", "seed 7", "mean"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "a photo of a person, smiling");
    for row in &rows {
        assert_eq!(row.len(), 6);
        let v: Vec<f64> = row[1..].iter().map(|s| number(s)).collect();
        assert!(v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)), "{row:?}");
        let mean = v[..4].iter().sum::<f64>() / 4.0;
        assert!((mean - v[4]).abs() < 1e-9, "mean column is wrong: {row:?}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("similarity.json")).unwrap())
            .unwrap();
    assert_eq!(json["demo"], true);
    assert_eq!(json["values"].as_array().unwrap().len(), 2);

    let (w, h) = png_size(&out.join("similarity.png"));
    assert!(w > 4 * 64 && h > 64, "heat map is {w}x{h}");
    for seed in [0, 1, 2, 7] {
        assert_eq!(png_size(&out.join(format!("images/seed-{seed}.png"))), (64, 64));
    }
}

#[test]
fn similarity_rejects_bad_seeds_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
        .args(["similarity", "--prompts", "x", "--seeds", "5..2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("range is empty") && stderr.contains("0..10"), "{stderr}");
}
