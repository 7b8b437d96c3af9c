//! The real hf-hub client against a local hub: a std-only HTTP server on
//! 127.0.0.1 that serves the hub's file-resolution route
//! (`GET /{repo}/resolve/{revision}/{file}` with `Range`, answering with
//! `x-repo-commit`, `x-linked-etag`, `Content-Range`) for a tiny repo made of
//! fixture files. Covers fetch, resume after a cut connection, a checksum
//! mismatch, a 404, a server that is down, offline, and the token header.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsd_weights::{ChecksumStatus, Error, FetchOptions, FileState, Manifest, Outcome, Silent, Store};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

#[derive(Default)]
struct HubState {
    /// Request path -> served bytes.
    files: HashMap<String, Vec<u8>>,
    /// Cut the next `n` body responses after this many bytes.
    cut: Option<(usize, usize)>,
    /// Send this many bytes of a body, then nothing (the connection stays open).
    stall_after: Option<usize>,
    /// Headers sent instead of the real etag and commit (a hostile server).
    etag: Option<String>,
    commit: Option<String>,
    seen: Vec<Seen>,
}

/// A tiny hub on 127.0.0.1.
struct Hub {
    endpoint: String,
    state: Arc<Mutex<HubState>>,
}

impl Hub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(HubState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Self { endpoint, state }
    }

    fn put(&self, repo: &str, revision: &str, file: &str, bytes: Vec<u8>) {
        let path = format!("/{repo}/resolve/{}/{file}", revision.replace('/', "%2F"));
        self.state.lock().unwrap().files.insert(path, bytes);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn opts(&self) -> FetchOptions {
        FetchOptions { endpoint: self.endpoint.clone(), retries: 0, ..FetchOptions::default() }
    }
}

fn serve(conn: TcpStream, state: &Mutex<HubState>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    // The client's connection probe opens and closes without a request.
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut conn = conn;
    let range = headers.get("range").cloned();
    let (body, cut, stall_after, etag_override, commit) = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            path: path.clone(),
            range: range.clone(),
            authorization: headers.get("authorization").cloned(),
        });
        let body = st.files.get(&path).cloned();
        (body, st.cut, st.stall_after, st.etag.clone(), st.commit.clone().unwrap_or_else(|| COMMIT.to_string()))
    };
    let Some(data) = body else {
        let msg = "Entry not found";
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        return;
    };
    let total = data.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() { total - 1 } else { b.parse().unwrap() };
            (a, b.min(total - 1))
        }
        None => (0, total - 1),
    };
    if start >= total {
        let _ = write!(conn, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let etag = etag_override.unwrap_or_else(|| sha(&data));
    let (status, extra) = if range.is_some() {
        ("206 Partial Content", format!("Content-Range: bytes {start}-{end}/{total}\r\n"))
    } else {
        ("200 OK", String::new())
    };
    let body = &data[start..=end];
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nx-repo-commit: {commit}\r\nx-linked-etag: \"{etag}\"\r\netag: \"{etag}\"\r\nx-linked-size: {total}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method == "HEAD" {
        return;
    }
    // A real body request (not the one-byte metadata probe) may stall.
    if let (Some(after), true) = (stall_after, body.len() > 1) {
        let _ = conn.write_all(&body[..after.min(body.len())]);
        let _ = conn.flush();
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    // A real body request (not the one-byte metadata probe) may be cut.
    if let (Some((n, after)), true) = (cut, body.len() > 1) {
        if n > 0 {
            state.lock().unwrap().cut = Some((n - 1, after));
            let _ = conn.write_all(&body[..after.min(body.len())]);
            let _ = conn.flush();
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = conn.write_all(body);
}

/// A store in a temp dir with one pinned entry `tiny` (the arcface fixture
/// network) in `test/tiny` at `revision`, and an unpinned `config.json`.
fn setup(hub: &Hub, revision: &str, pin_sha: Option<&str>) -> (tempfile::TempDir, Store, Vec<u8>) {
    let model = fixture("arcface/model.pth");
    let config = fixture("arcface/config.json");
    hub.put("test/tiny", revision, "model.pth", model.clone());
    hub.put("test/tiny", revision, "config.json", config);
    let pin = pin_sha.map_or_else(|| sha(&model), str::to_string);
    let text = format!(
        r#"
        [[weights]]
        name = "tiny"
        description = "narrow arcface fixture"
        repo = "test/tiny"
        revision = "{revision}"
        licence = "MIT"
        [[weights.files]]
        file = "model.pth"
        size = {}
        sha256 = "{pin}"
        format = "torch"
        [[weights.files]]
        file = "config.json"
        format = "json"
        [[weights]]
        name = "gone"
        description = "a file the hub does not have"
        repo = "test/tiny"
        licence = "MIT"
        [[weights.files]]
        file = "missing.pth"
        format = "torch"
        "#,
        model.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), Manifest::parse(&text, "test manifest").unwrap());
    (dir, store, model)
}

#[test]
fn fetch_downloads_verifies_and_installs() {
    let hub = Hub::start();
    let (_dir, store, model) = setup(&hub, "refs/pr/1", None);
    let mut opts = hub.opts();
    opts.token = Some("hf_secret".into());
    let entries = store.manifest.select(&["tiny".into()]).unwrap();
    let mut events = Vec::new();
    let mut progress = |e: lsd_weights::Event| events.push(format!("{e:?}"));
    let results = store.fetch(&entries, &opts, &mut progress).unwrap();
    assert_eq!(results.len(), 2);
    for r in &results {
        let rep = r.result.as_ref().unwrap_or_else(|e| panic!("{}: {e}", r.file));
        assert_eq!(rep.outcome, Outcome::Downloaded { resumed_from: 0 });
    }
    let m = results[0].result.as_ref().unwrap();
    assert!(matches!(m.checksum, ChecksumStatus::Ok { .. }), "{:?}", m.checksum);
    assert_eq!(std::fs::read(&m.path).unwrap(), model);
    assert_eq!(m.path, store.dir.join("tiny").join("model.pth"));
    // config.json is not pinned: reported with the values to pin.
    let c = results[1].result.as_ref().unwrap();
    assert!(matches!(c.checksum, ChecksumStatus::NotPinned { .. }), "{:?}", c.checksum);
    // Progress reached the full size.
    assert!(events.iter().any(|e| e.contains(&format!("Position({})", model.len()))), "{events:?}");
    // The revision is URL-encoded, the token sent.
    let seen = hub.seen();
    assert!(seen.iter().all(|s| s.path.starts_with("/test/tiny/resolve/refs%2Fpr%2F1/")), "{seen:?}");
    assert!(seen.iter().all(|s| s.authorization.as_deref() == Some("Bearer hf_secret")), "{seen:?}");
    // list shows it verified; resolve finds it; a second fetch does nothing.
    let listing = store.list();
    assert_eq!(listing[0].state, FileState::Verified);
    assert_eq!(store.resolve("tiny").unwrap(), m.path);
    let n = hub.seen().len();
    let again = store.fetch(&entries, &opts, &mut Silent).unwrap();
    assert_eq!(again[0].result.as_ref().unwrap().outcome, Outcome::AlreadyPresent);
    assert_eq!(hub.seen().len(), n, "nothing is requested when everything is present");
}

#[test]
fn fetch_resumes_after_a_cut_connection() {
    let hub = Hub::start();
    let (_dir, store, model) = setup(&hub, "main", None);
    let half = model.len() / 2;
    hub.state.lock().unwrap().cut = Some((1, half));
    let entry = store.manifest.get("tiny").unwrap();
    let spec = &entry.files[0];
    let err = store.fetch_file(entry, spec, &hub.opts(), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Download { .. }), "{msg}");
    assert!(msg.contains("to resume") && msg.contains("lsd-tui weights fetch tiny"), "{msg}");
    let part = store.partial_path(entry, spec).unwrap();
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64, "the partial download is kept");
    assert!(!store.path(entry, spec).exists(), "nothing unverified is installed");
    assert_eq!(store.list()[0].state, FileState::Missing { partial: Some(half as u64) });

    let rep = store.fetch_file(entry, spec, &hub.opts(), &mut Silent).unwrap();
    assert_eq!(rep.outcome, Outcome::Downloaded { resumed_from: half as u64 });
    assert!(matches!(rep.checksum, ChecksumStatus::Ok { .. }));
    assert_eq!(std::fs::read(&rep.path).unwrap(), model);
    let ranges: Vec<_> = hub.seen().into_iter().filter_map(|s| s.range).collect();
    assert!(ranges.contains(&format!("bytes={half}-")), "resumed with a Range request: {ranges:?}");
}

#[test]
fn fetch_retries_and_resumes_within_one_call() {
    let hub = Hub::start();
    let (_dir, store, model) = setup(&hub, "main", None);
    hub.state.lock().unwrap().cut = Some((1, 1000));
    let entry = store.manifest.get("tiny").unwrap();
    let opts = FetchOptions { retries: 2, ..hub.opts() };
    let rep = store.fetch_file(entry, &entry.files[0], &opts, &mut Silent).unwrap();
    assert_eq!(std::fs::read(&rep.path).unwrap(), model);
    let ranges: Vec<_> = hub.seen().into_iter().filter_map(|s| s.range).collect();
    assert!(ranges.contains(&"bytes=1000-".to_string()), "{ranges:?}");
}

#[test]
fn checksum_mismatch_deletes_the_download() {
    let hub = Hub::start();
    let wrong = "0".repeat(64);
    let (_dir, store, _) = setup(&hub, "main", Some(&wrong));
    let entry = store.manifest.get("tiny").unwrap();
    let err = store.fetch_file(entry, &entry.files[0], &hub.opts(), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Verification { .. }), "{msg}");
    assert!(msg.contains("expected 0000") && msg.contains("deleted"), "{msg}");
    assert!(!store.path(entry, &entry.files[0]).exists());
    // Nothing is left in hf-hub's cache either (no blob, no partial).
    let leftovers: Vec<_> = walk(&store.hub_dir())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            (s.contains("/blobs/") || s.contains("/snapshots/")) && !s.ends_with(".lock")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_local_file_is_replaced() {
    let hub = Hub::start();
    let (_dir, store, model) = setup(&hub, "main", None);
    let entry = store.manifest.get("tiny").unwrap();
    let dest = store.path(entry, &entry.files[0]);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, &model[..100]).unwrap();
    let mut notes = Vec::new();
    let mut progress = |e: lsd_weights::Event| {
        if let lsd_weights::Event::Note(n) = e {
            notes.push(n.to_string())
        }
    };
    // Offline, a bad file is reported and kept.
    let offline = FetchOptions { offline: true, ..hub.opts() };
    let err = store.fetch_file(entry, &entry.files[0], &offline, &mut Silent).unwrap_err();
    assert!(matches!(err, Error::Verification { .. }) && err.to_string().contains("kept"), "{err}");
    assert!(dest.exists());
    let rep = store.fetch_file(entry, &entry.files[0], &hub.opts(), &mut progress).unwrap();
    assert_eq!(rep.outcome, Outcome::Downloaded { resumed_from: 0 });
    assert_eq!(std::fs::read(&dest).unwrap(), model);
    assert!(notes.iter().any(|n| n.contains("expected") && n.contains("deleted")), "{notes:?}");
}

#[test]
fn not_on_the_hub_is_a_404_naming_the_file() {
    let hub = Hub::start();
    let (_dir, store, _) = setup(&hub, "main", None);
    let entries = store.manifest.select(&["gone".into()]).unwrap();
    let results = store.fetch(&entries, &hub.opts(), &mut Silent).unwrap();
    let err = results[0].result.as_ref().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Http { status: 404, .. }), "{msg}");
    assert!(msg.contains("missing.pth") && msg.contains("test/tiny"), "{msg}");
}

#[test]
fn a_server_that_is_down_fails_at_once_with_what_is_missing() {
    let endpoint = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), Manifest::builtin());
    let entries = store.manifest.select(&["arcface-ir-se50".into()]).unwrap();
    let opts = FetchOptions { endpoint, ..FetchOptions::default() };
    let t = Instant::now();
    let err = store.fetch(&entries, &opts, &mut Silent).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{msg}");
    assert!(msg.contains("model_ir_se50.pth"), "{msg}");
}

#[test]
fn offline_fails_at_once_without_requests() {
    let hub = Hub::start();
    let (_dir, store, _) = setup(&hub, "main", None);
    let entries = store.manifest.select(&["tiny".into()]).unwrap();
    let opts = FetchOptions { offline: true, ..hub.opts() };
    let err = store.fetch(&entries, &opts, &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Offline { .. }), "{msg}");
    assert!(msg.contains("model.pth") && msg.contains("config.json") && msg.contains("weights fetch tiny"), "{msg}");
    assert!(hub.seen().is_empty());
}

#[test]
fn options_come_from_the_environment() {
    // Only this test reads these variables.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("HF_TOKEN", "hf_from_env");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let o = FetchOptions::from_env();
    assert_eq!(o.endpoint, "http://127.0.0.1:9");
    assert_eq!(o.token.as_deref(), Some("hf_from_env"));
    assert!(o.offline);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Issue 15: hf-hub 0.4 has no read timeout, so a server that stopped
/// sending hung the fetch for ever. Now the transfer fails after the stall
/// timeout with a clear error, and keeps what it received for the next
/// fetch to resume.
#[test]
fn issue_15_a_stalled_download_fails_and_resumes_next_time() {
    let hub = Hub::start();
    let (_dir, store, model) = setup(&hub, "main", None);
    let part_len = model.len() / 3;
    hub.state.lock().unwrap().stall_after = Some(part_len);
    let entry = store.manifest.get("tiny").unwrap().clone();
    let spec = entry.files[0].clone();
    let opts = FetchOptions { stall_timeout: Duration::from_secs(1), ..hub.opts() };
    let (tx, rx) = std::sync::mpsc::channel();
    let store2 = store.clone();
    let (e2, s2, o2) = (entry.clone(), spec.clone(), opts.clone());
    std::thread::spawn(move || {
        let _ = tx.send(store2.fetch_file(&e2, &s2, &o2, &mut Silent));
    });
    let t = Instant::now();
    let result = rx.recv_timeout(Duration::from_secs(30)).expect("the stalled fetch did not return within 30 s");
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    let err = result.expect_err("a stalled transfer fails");
    let msg = err.to_string();
    assert!(matches!(err, Error::Download { .. }), "{msg}");
    assert!(msg.contains("sent nothing for 1 s") && msg.contains("to resume"), "{msg}");
    let part = store.partial_path(&entry, &spec).unwrap();
    assert_eq!(std::fs::metadata(&part).unwrap().len(), part_len as u64, "the bytes received are kept");
    hub.state.lock().unwrap().stall_after = None;
    let rep = store.fetch_file(&entry, &spec, &opts, &mut Silent).unwrap();
    assert_eq!(rep.outcome, Outcome::Downloaded { resumed_from: part_len as u64 });
    assert_eq!(std::fs::read(&rep.path).unwrap(), model);
}

/// Issue 15: the etag and commit the server sends became file paths
/// unchecked, so a hostile HF_ENDPOINT could write outside the cache.
#[test]
fn issue_15_server_etags_and_commits_that_name_paths_are_refused() {
    for (etag, commit) in
        [(Some("../../../../escaped"), None), (None, Some("../../../../escaped")), (Some("a/b"), None)]
    {
        let hub = Hub::start();
        let (dir, store, _) = setup(&hub, "main", None);
        {
            let mut st = hub.state.lock().unwrap();
            st.etag = etag.map(str::to_string);
            st.commit = commit.map(str::to_string);
        }
        // An unpinned file: its partial download would be named after the etag.
        let entry = store.manifest.get("tiny").unwrap();
        let err = store.fetch_file(entry, &entry.files[1], &hub.opts(), &mut Silent).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("refusing it") && msg.contains("escaped") || msg.contains("a/b"), "{msg}");
        // Nothing was written anywhere but inside the store.
        let outside: Vec<PathBuf> = walk(dir.path().parent().unwrap())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("escaped"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
    }
}

/// A file with the publisher's `url` is never requested, not even from the
/// hub: fetching it says where to put it, offline as online, and it does not
/// count as missing for the checks before any request.
#[test]
fn a_file_published_outside_the_hub_is_never_downloaded() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
        [[weights]]
        name = "byhand"
        description = "d"
        repo = "publisher/project"
        licence = "NC"
        [[weights.files]]
        file = "net.pkl"
        url = "https://example.invalid/net.pkl"
        format = "network-pickle"
    "#;
    let store = Store::new(dir.path(), Manifest::parse(text, "test manifest").unwrap());
    let entries = store.manifest.select(&["byhand".into()]).unwrap();
    for offline in [false, true] {
        let opts = FetchOptions { offline, ..hub.opts() };
        let results = store.fetch(&entries, &opts, &mut Silent).unwrap();
        assert_eq!(results.len(), 1);
        let err = results[0].result.as_ref().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ByHand { .. }), "{msg}");
        assert!(
            msg.contains("https://example.invalid/net.pkl")
                && msg.contains("net.pkl")
                && msg.contains("weights check byhand"),
            "{msg}"
        );
    }
    assert!(hub.seen().is_empty(), "nothing was requested");
}
