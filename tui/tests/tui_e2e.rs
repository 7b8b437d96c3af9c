//! End to end: the real `lsd-tui` in a tmux pane, driven with `send-keys`
//! and read with `capture-pane`.
//!
//! - `demo`: the step counter advances, space pauses it, and `q` (then `y`
//!   to save) exits with status 3 (stopped by the user), the terminal
//!   restored (canonical mode and echo back on, alternate screen left) and
//!   the outputs written.
//! - Issue 14: a run started in a detached session, as on a remote box,
//!   with no `--graphics` flag, keeps training with no client; a client that
//!   attaches later sees the UI; after it detaches the run goes on; killing
//!   the tmux server (a real hang-up) saves the run and exits with 129; and
//!   `--resume` finishes it.
//!
//! Needs tmux, and fails without it (CI installs it, see `.ci/run`). The
//! built-in loss plugins are built on first use (as in `run.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lsd-tui");

/// The folders holding the built-in plugins, built here.
fn plugin_path() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let libs = lsd_plugin_testing::build_plugins(
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
    session: &'static str,
}

impl Tmux {
    fn new(name: &str, session: &'static str) -> Self {
        Self { socket: format!("lsd-tui-{name}-{}", std::process::id()), session }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", self.session]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session];
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

/// Fails the test when tmux is missing: an end-to-end test that skips
/// itself passes without testing anything.
fn require_tmux() {
    let version = Command::new("tmux").arg("-V").output();
    match version {
        Ok(o) if o.status.success() => eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim()),
        _ => panic!(
            "tmux is not installed; the TUI end-to-end tests need it (apt-get install -y tmux; .ci/run installs it)"
        ),
    }
}

#[test]
fn tui_demo_in_tmux_steps_pauses_quits_and_saves() {
    require_tmux();
    let plugins = plugin_path();
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let tmux = Tmux::new("e2e", "e2e");
    // After the app exits, show its status and whether the tty is back in
    // canonical mode with echo (what a restored terminal has).
    let script = format!(
        "cd '{}' && LSD_PLUGIN_PATH='{plugins}' LSD_WEIGHTS_DIR='{}' '{BIN}' demo --graphics halfblocks --output '{}'; echo EXIT=$?; echo \"TTY<$(stty -a | tr ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' ')>\"; sleep 600",
        dir.path().display(),
        weights.path().display(),
        out.display()
    );
    let started =
        tmux.cmd(&["new-session", "-d", "-s", "e2e", "-x", "80", "-y", "24", "bash", "--norc", "-c", &script]);
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
    let s = tmux.wait_for("the quit question or the exit", Duration::from_secs(10), |s| {
        s.contains("Save the run") || s.contains("EXIT=")
    });
    if s.contains("Save the run") {
        tmux.keys(&["y"]);
    }
    // Wait for the tty report that follows the exit status, not just the
    // status: the report is printed a moment later.
    let s = tmux.wait_for("the app to exit", Duration::from_secs(60), |s| {
        s.contains("EXIT=") && s.split("TTY<").nth(1).is_some_and(|rest| rest.contains('>'))
    });
    eprintln!("after exit:\n{s}");
    // Stopped by the user before the last step: 3, and how to go on.
    assert!(s.contains("EXIT=3"), "not the stopped-by-the-user status:\n{s}");
    let joined = s.replace('\n', "");
    assert!(joined.contains("continue with:") && joined.contains("--resume"), "no resume command:\n{s}");
    assert!(s.contains("icanon") && !s.contains("-icanon"), "terminal left in raw mode:\n{s}");
    assert!(s.contains("echo") && !s.contains("-echo "), "echo left off:\n{s}");
    assert!(
        !s.contains("Messages") && !s.contains("Loss ·"),
        "the TUI is still on screen (alternate screen not left):\n{s}"
    );
    let direction = find_file(&out, "direction.safetensors");
    assert!(direction.is_some(), "no direction.safetensors under {}", out.display());
}

/// A recipe quick enough for a test, long enough to outlast its checks.
const LONG: &str = "\
prompt: a photo of a person with gray hair
steps: 60
seed: 1
seeds: [0]
batch: 1
alpha: 3
checkpoint_every: 2
preview: {every: 2, alphas: [-3, 0, 3], seeds: [0]}
terms:
  - plugin: clip
";

/// Lines of losses.csv after its header: the steps taken.
fn steps_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("losses.csv")).map_or(0, |t| t.lines().count().saturating_sub(1))
}

/// The regression test of issue 14
/// (`lsd-tui run` in `tmux new -d` stopped at the first image draw with a
/// fake SIGHUP and exit status 0).
#[test]
fn issue_14_detached_tmux_run_survives_attach_detach_and_a_real_hang_up() {
    require_tmux();
    let plugins = plugin_path();
    let dir = tempfile::tempdir().expect("temp dir");
    let recipe = dir.path().join("long.yaml");
    std::fs::write(&recipe, LONG).expect("writable");
    let out = dir.path().join("out");
    let (status, err) = (dir.path().join("status"), dir.path().join("stderr.txt"));
    let inner = Tmux::new("inner", "run");
    // The shell outlives the hang-up (`trap : HUP`; lsd-tui itself gets the
    // default disposition back) to write down lsd-tui's exit status.
    let script = format!(
        "trap : HUP; cd '{d}' && LSD_PLUGIN_PATH='{plugins}' LSD_WEIGHTS_DIR='{d}' '{BIN}' run long.yaml --output '{o}' 2>'{e}'; echo $? > '{s}'",
        d = dir.path().display(),
        o = out.display(),
        e = err.display(),
        s = status.display(),
    );
    let started =
        inner.cmd(&["new-session", "-d", "-s", "run", "-x", "100", "-y", "30", "bash", "--norc", "-c", &script]);
    assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));
    let diagnose = || format!("stderr: {}", std::fs::read_to_string(&err).unwrap_or_default());

    // No client attached: training goes on well past the first image draws
    // (a preview every 2 steps; the old TUI stopped at the first).
    let s = inner
        .wait_for("step 12 with no client attached", Duration::from_secs(300), |s| step(s).is_some_and(|n| n > 12));
    assert!(!status.exists(), "the run ended with no client attached: {}", diagnose());
    eprintln!("detached, no client:\n{s}");
    // No outer terminal to ask yet: half blocks, and the header says so.
    assert!(s.contains("img halfblocks"), "the header does not name the protocol:\n{s}");

    // A client attaches: a tmux client running in a second tmux server's
    // pane, which acts as its terminal. It shows the live UI at its size.
    let outer = Tmux::new("outer", "view");
    let attach = format!("env -u TMUX tmux -L '{}' -f /dev/null attach -t run", inner.socket);
    let o = outer.cmd(&["new-session", "-d", "-s", "view", "-x", "120", "-y", "40", "bash", "--norc", "-c", &attach]);
    assert!(o.status.success(), "outer tmux: {}", String::from_utf8_lossy(&o.stderr));
    let before = step(&s).unwrap_or(0);
    let v = outer.wait_for("the UI in the attached client", Duration::from_secs(60), |v| {
        v.contains("Messages") && v.contains("Loss") && step(v).is_some_and(|n| n > before)
    });
    eprintln!("attached client:\n{v}");
    // tmux grows the pane before the UI redraws into it: wait for the
    // redraw (its header spans the new width), not only for the new height.
    let wide = |s: &str| s.lines().next().is_some_and(|l| l.chars().count() > 100);
    let w =
        inner.wait_for("the UI at the client's size", Duration::from_secs(30), |s| s.lines().count() >= 35 && wide(s));
    assert!(wide(&w), "the UI did not follow the new width:\n{w}");

    // Detach: the run goes on.
    assert!(inner.cmd(&["detach-client", "-s", "run"]).status.success(), "detach-client");
    let at_detach = step(&inner.screen()).unwrap_or(0);
    inner.wait_for("steps after the detach", Duration::from_secs(120), |s| step(s).is_some_and(|n| n > at_detach + 2));
    assert!(!status.exists(), "the run ended at the detach: {}", diagnose());
    drop(outer);

    // A real hang-up: the tmux server goes away with the pane's terminal.
    let at_kill = steps_logged(&out);
    assert!(inner.cmd(&["kill-server"]).status.success(), "kill-server");
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&status).is_ok_and(|t| t.ends_with('\n')) {
        assert!(Instant::now() < end, "no exit status 60 s after the hang-up; {}", diagnose());
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&status).expect("status");
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    eprintln!("after the hang-up: status {code}{stderr}");
    assert_eq!(code.trim(), "129", "SIGHUP is 128 + 1; {stderr}");
    assert!(stderr.contains("SIGHUP: stopped at step") && stderr.contains("--resume"), "{stderr}");
    let saved = steps_logged(&out);
    assert!(saved >= at_kill && saved < 60, "checkpointed {saved} steps (at the kill: {at_kill})");
    for f in ["checkpoint.safetensors", "direction.safetensors", "metrics.json"] {
        assert!(out.join(f).is_file(), "no {f} after the hang-up");
    }

    // --resume finishes the run.
    let resumed = Command::new(BIN)
        .args([
            "run",
            recipe.to_str().expect("utf-8"),
            "--output",
            out.to_str().expect("utf-8"),
            "--resume",
            "--headless",
        ])
        .env("LSD_PLUGIN_PATH", &plugins)
        .env("LSD_WEIGHTS_DIR", dir.path())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&resumed.stdout), String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(resumed.status.code(), Some(0), "{text}");
    assert_eq!(steps_logged(&out), 60, "{text}");
}
