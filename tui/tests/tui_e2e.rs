//! End to end: the real `lsd-tui demo` in a tmux pane, driven with
//! `send-keys` and read with `capture-pane`.
//!
//! Checks that the step counter advances, that space pauses it, and that
//! `q` (then `y` to save) exits with the terminal restored (canonical mode
//! and echo back on, alternate screen left) and the outputs written.
//!
//! Needs tmux. Without it the test prints a loud notice and passes; CI
//! installs tmux, so there it always runs. The built-in loss plugins are
//! built on first use (as in `run.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lsd-tui");

/// The folders holding the built-in plugins, built here.
fn plugin_path() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let libs = lsd_core::plugin::testing::build_plugins(
        root.join("Cargo.toml"),
        &["lsd-plugin-clip", "lsd-plugin-identity", "lsd-plugin-segmentation"],
    )
    .expect("the built-in plugins build");
    let mut dirs: Vec<PathBuf> = libs.iter().filter_map(|l| l.parent().map(Path::to_path_buf)).collect();
    dirs.dedup();
    std::env::join_paths(dirs).expect("joinable").to_string_lossy().into_owned()
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "e2e"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "e2e"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success(), "send-keys {keys:?}");
    }

    /// Waits until `pred` holds for the screen; panics with the screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(!s.contains("EXIT="), "the app exited while waiting for {what}; screen:\n{s}");
            assert!(Instant::now() < end, "timed out waiting for {what}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The `N` of `step N/M` on the screen.
fn step(screen: &str) -> Option<usize> {
    let i = screen.find("step ")?;
    let rest = &screen[i + 5..];
    let slash = rest.find('/')?;
    rest[..slash].trim().parse().ok()
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

fn tmux_present() -> bool {
    let ok = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED: tmux is not installed; the TUI end-to-end test did NOT run.");
        eprintln!("!!! Install tmux (apt-get install -y tmux) to run it.");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n");
    }
    ok
}

#[test]
fn tui_demo_in_tmux_steps_pauses_quits_and_saves() {
    if !tmux_present() {
        return;
    }
    let plugins = plugin_path();
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let tmux = Tmux { socket: format!("lsd-tui-e2e-{}", std::process::id()) };
    // After the app exits, show its status and whether the tty is back in
    // canonical mode with echo (what a restored terminal has).
    let script = format!(
        "cd '{}' && LSD_PLUGIN_PATH='{plugins}' LSD_WEIGHTS_DIR='{}' '{BIN}' demo --graphics halfblocks --output '{}'; echo EXIT=$?; echo \"TTY<$(stty -a | tr ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' ')>\"; sleep 600",
        dir.path().display(),
        weights.path().display(),
        out.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-s", "e2e", "-x", "80", "-y", "24", "bash", "--norc", "-c", &script]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));

    // The run starts and the step counter advances.
    let s = tmux.wait_for("the first steps", Duration::from_secs(180), |s| step(s).is_some_and(|n| n > 0));
    assert!(s.contains("DEMO MODEL"), "demo label missing:\n{s}");
    let a = step(&s).unwrap_or(0);
    let s = tmux.wait_for("the step counter to advance", Duration::from_secs(60), |s| step(s).is_some_and(|n| n > a));
    eprintln!("running:\n{s}");

    // Space pauses: the counter stops.
    tmux.keys(&["Space"]);
    let s = tmux.wait_for("paused", Duration::from_secs(30), |s| s.contains("paused"));
    let p1 = step(&s).expect("a step while paused");
    std::thread::sleep(Duration::from_secs(2));
    let s = tmux.screen();
    assert_eq!(step(&s), Some(p1), "the step counter moved while paused:\n{s}");
    assert!(s.contains("paused"), "{s}");

    // q asks to save while the run goes; y saves and exits.
    tmux.keys(&["q"]);
    let s = tmux.wait_for("the quit question or the exit", Duration::from_secs(10), |s| s.contains("Save the run") || s.contains("EXIT="));
    if s.contains("Save the run") {
        tmux.keys(&["y"]);
    }
    // Wait for the tty report that follows the exit status, not just the
    // status: the report is printed a moment later.
    let s = tmux.wait_for("the app to exit", Duration::from_secs(60), |s| {
        s.contains("EXIT=") && s.split("TTY<").nth(1).is_some_and(|rest| rest.contains('>'))
    });
    eprintln!("after exit:\n{s}");
    assert!(s.contains("EXIT=0"), "non-zero exit:\n{s}");
    assert!(s.contains("icanon") && !s.contains("-icanon"), "terminal left in raw mode:\n{s}");
    assert!(s.contains("echo") && !s.contains("-echo "), "echo left off:\n{s}");
    assert!(!s.contains("Messages") && !s.contains("Loss ·"), "the TUI is still on screen (alternate screen not left):\n{s}");
    let direction = find_file(&out, "direction.safetensors");
    assert!(direction.is_some(), "no direction.safetensors under {}", out.display());
}
