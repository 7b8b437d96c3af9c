//! Atomic, durable file writes: the one way every output is written.
//!
//! A file is written to a fresh temporary file in the same folder
//! (`tempfile`'s `NamedTempFile`, created with a name nobody else holds and
//! removed if anything fails), flushed to the disk (`fsync`), renamed over
//! the target (`NamedTempFile::persist`), and then the folder
//! itself is flushed, so that the rename is on the disk too. A reader, or a
//! run killed at any moment (power cut included), finds either the old file
//! or the new one, never half of one, and a file we reported as written is
//! still there after a crash. (Renaming without the folder's `fsync` can
//! lose the new name on ext4/xfs after a power cut; without the file's, the
//! new name can point to empty data.)
//!
//! - [`write`] writes bytes.
//! - [`write_with`] takes anything that writes a file at a path it is given (a
//!   PNG encoder, a safetensors serialiser).
//! - [`rename`]: moves a finished file into place durably (a download).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically and durably. Creates the folder.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// Writes `path` atomically and durably with `write`, which gets the path
/// of a temporary file in the same folder to write (create or truncate).
/// Creates the folder. On any failure the temporary file is removed and
/// `path` keeps its old content.
pub fn write_with<E: Display>(path: &Path, write: impl FnOnce(&Path) -> std::result::Result<(), E>) -> Result<()> {
    let dir = parent(path);
    create_dir(&dir)?;
    // Dropped on any error below, which removes the temporary file.
    let tmp = temp_file(&dir, path)?;
    #[cfg(test)]
    testing::injected_failure(path).map_err(|e| Error::io("writing", tmp.path(), e))?;
    write(tmp.path()).map_err(|e| Error::io("writing", tmp.path(), std::io::Error::other(e.to_string())))?;
    sync_file(tmp.path())?;
    tmp.persist(path).map_err(|e| Error::io("renaming into place", path, e.error))?;
    sync_dir(&dir)
}

/// Moves the finished file `from` to `to` durably: flushes `from`, renames
/// it, and flushes the folder of `to` (and of `from`, when another).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    sync_file(from)?;
    let dir = parent(to);
    create_dir(&dir)?;
    std::fs::rename(from, to).map_err(|e| Error::io("renaming into place", to, e))?;
    sync_dir(&dir)?;
    let from_dir = parent(from);
    if from_dir != dir {
        sync_dir(&from_dir)?;
    }
    Ok(())
}

/// Flushes a folder's entries (names, renames) to the disk. A no-op where
/// folders cannot be opened as files (Windows, whose renames are durable
/// once `MoveFileEx` returns with write-through).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let f = std::fs::File::open(dir).map_err(|e| Error::io("opening folder", dir, e))?;
        f.sync_all().map_err(|e| Error::io("flushing folder", dir, e))?;
    }
    #[cfg(test)]
    testing::record(dir);
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io("opening", path, e))?;
    f.sync_all().map_err(|e| Error::io("flushing", path, e))?;
    #[cfg(test)]
    testing::record(path);
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` (and its parents); a folder it created is made durable in
/// its own parent.
fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating folder", dir, e))?;
    sync_dir(&parent(dir))
}

/// An empty temporary file next to `path`, `.NAME.tmpXXXXXX`, under a
/// random name nobody else holds (`tempfile` creates it exclusively, so a
/// name left by a crashed run, or a link planted there, is never reused).
fn temp_file(dir: &Path, path: &Path) -> Result<tempfile::NamedTempFile> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let prefix = format!(".{name}.tmp");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // The permissions of a file created as usual (0666 less the umask), not
    // the temporary file's private 0600: the output is for others too.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir).map_err(|e| Error::io("creating a temporary file in", dir, e))
}

/// What tests observe of the writes: the files and folders flushed on the
/// calling thread, and writes made to fail (disk full) for chosen paths.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    thread_local! {
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    /// Paths whose next writes fail, with how many more times.
    static FAIL: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

    pub(crate) fn record(path: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    }

    /// The paths flushed on this thread since the last call (and forgets them).
    pub(crate) fn take_synced() -> Vec<PathBuf> {
        SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    /// Makes the next `times` writes of `path` fail as on a full disk.
    pub(crate) fn fail_writes(path: &Path, times: usize) {
        FAIL.lock().unwrap_or_else(|p| p.into_inner()).push((path.to_path_buf(), times));
    }

    pub(crate) fn injected_failure(path: &Path) -> std::io::Result<()> {
        let mut fail = FAIL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = fail.iter_mut().find(|(p, n)| p == path && *n > 0) {
            entry.1 -= 1;
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_flush_file_and_folder_and_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/a.txt");
        testing::take_synced();
        write(&path, b"one").expect("written");
        write(&path, b"two").expect("rewritten");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let synced = testing::take_synced();
        assert!(synced.contains(&dir.path().join("new")), "{synced:?}");
        assert!(synced.contains(&dir.path().to_path_buf()), "the new folder's parent: {synced:?}");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("new")).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["a.txt"]);
    }

    /// Issue 15: no write fsynced its folder, and PNGs and experiment
    /// tables were not fsynced at all. Every writer now flushes the file it
    /// renames into place and the folder that holds it.
    #[test]
    fn issue_15_every_writer_flushes_its_file_and_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let img = image::RgbImage::new(2, 2);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arcface/model.pth");
        let writers: Vec<(&str, Box<dyn Fn(&Path) -> Result<()>>)> = vec![
            ("outputs::write_atomic", Box::new(|p: &Path| crate::outputs::write_atomic(p, b"x"))),
            ("outputs::write_json", Box::new(|p: &Path| crate::outputs::write_json(p, &serde_json::json!({"a": 1})))),
            ("experiments table", Box::new(|p: &Path| crate::experiments::table::write_atomic(p, "a,b\n"))),
            ("render::save_png_atomic", Box::new(move |p: &Path| crate::render::save_png_atomic(&img, p))),
            (
                "torch::convert_to_safetensors",
                Box::new(move |p: &Path| crate::torch::convert_to_safetensors(&src, p).map(drop)),
            ),
        ];
        for (i, (name, write)) in writers.iter().enumerate() {
            let path = d.join(format!("out{i}.bin"));
            testing::take_synced();
            write(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let synced = testing::take_synced();
            let tmp = synced.iter().any(|p| {
                p.parent() == Some(d)
                    && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!(".out{i}.bin.tmp")))
            });
            assert!(tmp, "{name} did not flush its file: {synced:?}");
            assert!(synced.iter().any(|p| p == d), "{name} did not flush the folder: {synced:?}");
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.bin");
        write(&path, b"good").expect("written");
        testing::fail_writes(&path, 1);
        let e = write(&path, b"bad").expect_err("disk full");
        assert!(e.to_string().contains("b.bin"), "{e}");
        assert_eq!(std::fs::read(&path).expect("read"), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "no temporary left");
        write(&path, b"again").expect("the next write works");
    }

    #[test]
    fn a_planted_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        // Whatever sits at a guessable temporary name is left alone.
        for n in 0..4 {
            let _ = std::fs::write(dir.path().join(format!(".c.txt.tmp-{}-{n}", std::process::id())), b"x");
        }
        write(&path, b"ok").expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"ok");
    }
}
