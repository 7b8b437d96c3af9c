//! Records, at compile time, what this copy of lsd-plugin-api was built with, for
//! the plugin ABI fingerprint (the host's `lsd_core::plugin::Fingerprint`).
//!
//! Every crate that links lsd-plugin-api — the host binary and each plugin cdylib —
//! compiles its own copy of it, so the values set here describe the side that
//! embeds them. Two values cannot be read from inside Rust code:
//!
//! - `LSD_RUSTC_VERSION`: the output of `$RUSTC --version` (cargo always sets
//!   `RUSTC` for build scripts; a wrapper such as sccache is in
//!   `RUSTC_WRAPPER`, not here, so this is the real compiler).
//! - `LSD_CANDLE_VERSION`: the candle-core version this build resolved.
//!   candle exports no version constant and declares no `links` key (so no
//!   `DEP_*` variable), hence we read the `Cargo.lock` that governs this
//!   build. Cargo does not tell a build script where that is, so we look in
//!   two places and accept a lock file only if it lists this very package
//!   (`lsd-plugin-api` at `CARGO_PKG_VERSION`):
//!   1. the ancestors of `OUT_DIR` (`<target>/<profile>/build/…/out`): with
//!      the default target directory this is the root of the workspace that
//!      is being built — the plugin author's, when lsd-plugin-api is a dependency;
//!   2. the ancestors of `CARGO_MANIFEST_DIR`: lsd-plugin-api's own workspace, the
//!      right answer when lsd-plugin-api is a workspace member or a path dependency
//!      and the target directory lives elsewhere (`CARGO_TARGET_DIR`).
//!
//!   Within the lock file we take the candle-core that lsd-plugin-api's own entry
//!   depends on (`"candle-core 0.11.1"` when several versions are locked,
//!   plain `"candle-core"` when only one is). If nothing is found the value
//!   is `unknown`, which never equals a real version, so the host refuses the
//!   plugin rather than trusting a guess.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LSD_RUSTC_VERSION={rustc_version}");

    let own_version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let own_name = env::var("CARGO_PKG_NAME").unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(out) = env::var_os("OUT_DIR") {
        candidates.extend(lock_files_above(Path::new(&out)));
    }
    if let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") {
        candidates.extend(lock_files_above(Path::new(&dir)));
    }
    let mut candle = None;
    for lock in candidates {
        let Ok(text) = fs::read_to_string(&lock) else {
            continue;
        };
        if let Some(v) = candle_version(&text, &own_name, &own_version) {
            println!("cargo:rerun-if-changed={}", lock.display());
            candle = Some(v);
            break;
        }
    }
    let candle = candle.unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LSD_CANDLE_VERSION={candle}");
}

/// Every `Cargo.lock` in `start` and its ancestors, nearest first.
fn lock_files_above(start: &Path) -> Vec<PathBuf> {
    start.ancestors().map(|d| d.join("Cargo.lock")).filter(|p| p.is_file()).collect()
}

/// One `[[package]]` entry of a lock file: name, version, dependencies.
struct Entry {
    name: String,
    version: String,
    deps: Vec<String>,
}

/// Splits a lock file into its package entries. The format is TOML written
/// by cargo in a fixed shape (one key per line, `dependencies` as a list with
/// one quoted item per line), which is all this reads.
fn entries(lock: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut e = Entry { name: String::new(), version: String::new(), deps: Vec::new() };
        let mut in_deps = false;
        for line in block.lines().map(str::trim) {
            if in_deps {
                if line.starts_with(']') {
                    in_deps = false;
                } else {
                    e.deps.push(line.trim_end_matches(',').trim_matches('"').to_string());
                }
            } else if let Some(v) = line.strip_prefix("name = ") {
                e.name = v.trim_matches('"').to_string();
            } else if let Some(v) = line.strip_prefix("version = ") {
                e.version = v.trim_matches('"').to_string();
            } else if line.starts_with("dependencies = [") {
                in_deps = !line.ends_with(']');
            } else if line.starts_with('[') {
                break;
            }
        }
        out.push(e);
    }
    out
}

/// The candle-core version that package `name` at `version` depends on in
/// this lock file, if the lock file has that package.
fn candle_version(lock: &str, name: &str, version: &str) -> Option<String> {
    let all = entries(lock);
    let me = all.iter().find(|e| e.name == name && e.version == version)?;
    let dep = me.deps.iter().find(|d| *d == "candle-core" || d.starts_with("candle-core "))?;
    // "candle-core 0.11.1" or "candle-core 0.11.1 (registry+…)" when several
    // versions are locked; plain "candle-core" when only one is.
    if let Some(v) = dep.split_whitespace().nth(1) {
        return Some(v.to_string());
    }
    let found: Vec<&Entry> = all.iter().filter(|e| e.name == "candle-core").collect();
    match found.as_slice() {
        [one] => Some(one.version.clone()),
        _ => None,
    }
}
