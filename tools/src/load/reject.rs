//! The reject file of `kho load`: one JSON line per source record that was not loaded,
//! with where it is and why:
//!
//! ```text
//! {"source":"people.csv","line":12,"record":10,"byte":345,"reason":"column \"birth_date\": not a date (YYYY-MM-DD): \"1990-13-01\"","raw":"…"}
//! ```
//!
//! Each line is written whole and handed to the OS before `reject` returns, so a crash of
//! `kho load` loses no line it counted. The file is created 0600: `raw` may hold personal data.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::source::Position;

/// Permissions of a reject file: the owner's only.
const REJECT_FILE_MODE: u32 = 0o600;
/// How long a loader waits for the reject file's lock held by another loader, ms.
const REJECT_LOCK_WAIT_MS: u64 = 30_000;
/// Between two tries of that lock, ms.
const REJECT_LOCK_POLL_MS: u64 = 100;

/// One line of the reject file.
#[derive(Serialize)]
struct RejectLine<'a> {
    source: &'a str,
    line: u64,
    record: u64,
    byte: u64,
    reason: &'a str,
    raw: &'a str,
}

/// How far a reject file was written: stored in a checkpoint, to resume it exactly
/// (`RejectWriter::open_append` cuts the lines written after it, which will be written again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectMark {
    pub count: u64,
    pub bytes: u64,
}

/// Writes the reject file and counts the rejected rows against `--max-rejects`.
pub struct RejectWriter {
    file: File,
    path: PathBuf,
    max_rejects: u64,
    mark: RejectMark,
}

impl RejectWriter {
    /// Creates (or empties) the reject file.
    #[cfg(test)]
    pub fn create(path: &Path, max_rejects: u64) -> anyhow::Result<RejectWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(REJECT_FILE_MODE)
            .open(path)
            .with_context(|| format!("creating the reject file {}", path.display()))?;
        Self::restrict(&file, path)?;
        Ok(RejectWriter { file, path: path.to_path_buf(), max_rejects, mark: RejectMark::default() })
    }

    /// Opens the reject file of an interrupted load to go on writing it, from `mark` (from
    /// the checkpoint): the lines after it are cut, since their records are read again.
    pub fn open_append(path: &Path, max_rejects: u64, mark: RejectMark) -> anyhow::Result<RejectWriter> {
        Self::open_append_within(path, max_rejects, mark, std::time::Duration::from_millis(REJECT_LOCK_WAIT_MS))
    }

    /// [`RejectWriter::open_append`], waiting at most `wait` for the file's lock.
    fn open_append_within(path: &Path, max_rejects: u64, mark: RejectMark, wait: std::time::Duration) -> anyhow::Result<RejectWriter> {
        // Append mode: every write goes to the end, which `set_len` below moves to the mark.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(REJECT_FILE_MODE)
            .open(path)
            .with_context(|| format!("opening the reject file {}", path.display()))?;
        Self::restrict(&file, path)?;
        Self::lock(&file, path, wait)?;
        let len = file.metadata().with_context(|| format!("reading the reject file {}", path.display()))?.len();
        if len < mark.bytes {
            bail!("the reject file {} has {len} bytes, the checkpoint says {} were written: was it changed?", path.display(), mark.bytes);
        }
        file.set_len(mark.bytes).with_context(|| format!("cutting the reject file {} to the checkpoint", path.display()))?;
        Ok(RejectWriter { file, path: path.to_path_buf(), max_rejects, mark })
    }

    /// Takes the file's exclusive lock (`flock`), held while the writer lives (the OS
    /// drops it when the process ends, killed or not): a loader whose job was taken over
    /// (`--resume` elsewhere) may still write until its next checkpoint, which stops it;
    /// waits for it at most `REJECT_LOCK_WAIT_MS`.
    fn lock(file: &File, path: &Path, wait: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(REJECT_LOCK_POLL_MS))
                }
                Err(std::fs::TryLockError::WouldBlock) => bail!(
                    "the reject file {} is locked by another kho load (a loader of this job still running?) for more than {} ms; stop it, then resume",
                    path.display(),
                    wait.as_millis()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking the reject file {}", path.display()))
                }
            }
        }
    }

    /// 0600 also for a file that existed before.
    fn restrict(file: &File, path: &Path) -> anyhow::Result<()> {
        file.set_permissions(std::fs::Permissions::from_mode(REJECT_FILE_MODE))
            .with_context(|| format!("making the reject file {} private (0600)", path.display()))
    }

    /// Writes one rejected record; an error once more than `max_rejects` were rejected
    /// (the line is written first).
    pub fn reject(&mut self, source: &str, pos: &Position, reason: &str, raw: &str) -> anyhow::Result<()> {
        let line = RejectLine { source, line: pos.line, record: pos.record, byte: pos.byte, reason, raw };
        let mut text = serde_json::to_vec(&line).expect("a struct of strings and numbers serializes");
        text.push(b'\n');
        self.file.write_all(&text).with_context(|| format!("writing the reject file {}", self.path.display()))?;
        self.mark.count += 1;
        self.mark.bytes += text.len() as u64;
        if self.mark.count > self.max_rejects {
            let rows = if self.mark.count == 1 { "rejected row exceeds" } else { "rejected rows exceed" };
            bail!("{} {rows} --max-rejects {} (see {})", self.mark.count, self.max_rejects, self.path.display());
        }
        Ok(())
    }

    /// Syncs the file to disk: before a checkpoint that stores `mark` is written.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.file.sync_data().with_context(|| format!("syncing the reject file {}", self.path.display()))
    }

    pub fn count(&self) -> u64 {
        self.mark.count
    }

    /// How far the file is written, for a checkpoint.
    pub fn mark(&self) -> RejectMark {
        self.mark
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u64, record: u64, byte: u64) -> Position {
        Position { line, record, byte }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn each_rejected_record_is_one_json_line_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.jsonl");
        let mut w = RejectWriter::create(&path, 10).unwrap();
        w.reject(
            "people.csv",
            &pos(12, 10, 345),
            "column \"birth_date\": not a date (YYYY-MM-DD): \"1990-13-01\"",
            "1,\"a\nb\",1990-13-01",
        )
        .unwrap();
        // Readable before the writer is dropped or flushed: a crash would not lose it.
        let got = lines(&path);
        assert_eq!(
            got,
            vec![serde_json::json!({
                "source": "people.csv", "line": 12, "record": 10, "byte": 345,
                "reason": "column \"birth_date\": not a date (YYYY-MM-DD): \"1990-13-01\"",
                "raw": "1,\"a\nb\",1990-13-01"
            })]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"source\":\"people.csv\",\"line\":12,\"record\":10,\"byte\":345,\"reason\":"), "{text}");
        assert_eq!(text.lines().count(), 1, "an embedded newline is escaped");
        assert_eq!(w.count(), 1);
        assert_eq!(w.mark(), RejectMark { count: 1, bytes: text.len() as u64 });
        assert_eq!(w.path(), path);
    }

    #[test]
    fn the_reject_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejects.jsonl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _w = RejectWriter::create(&path, 0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "create empties an old file");
        let other = dir.path().join("new.jsonl");
        let _w = RejectWriter::open_append(&other, 0, RejectMark::default()).unwrap();
        assert_eq!(std::fs::metadata(&other).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn more_than_max_rejects_is_an_error_after_the_line_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut w = RejectWriter::create(&path, 2).unwrap();
        w.reject("a.csv", &pos(2, 0, 4), "bad", "x").unwrap();
        w.reject("a.csv", &pos(3, 1, 6), "bad", "y").unwrap();
        let e = format!("{:#}", w.reject("a.csv", &pos(4, 2, 8), "bad", "z").unwrap_err());
        assert_eq!(e, format!("3 rejected rows exceed --max-rejects 2 (see {})", path.display()));
        assert_eq!(lines(&path).len(), 3, "the row over the limit is in the file too");

        let mut w = RejectWriter::create(&path, 0).unwrap();
        let e = format!("{:#}", w.reject("a.csv", &pos(2, 0, 4), "bad", "x").unwrap_err());
        assert_eq!(e, format!("1 rejected row exceeds --max-rejects 0 (see {})", path.display()), "0: the first bad row stops");
    }

    #[test]
    fn resuming_cuts_the_lines_after_the_checkpoint_and_goes_on_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut w = RejectWriter::create(&path, 3).unwrap();
        w.reject("a.csv", &pos(2, 0, 4), "first", "").unwrap();
        let mark = w.mark();
        // Written after the checkpoint, then a crash: its record is read again on resume.
        w.reject("a.csv", &pos(5, 3, 20), "after the checkpoint", "").unwrap();
        drop(w);

        let mut w = RejectWriter::open_append(&path, 3, mark).unwrap();
        assert_eq!(w.count(), 1);
        w.reject("a.csv", &pos(5, 3, 20), "again", "").unwrap();
        w.reject("a.csv", &pos(6, 4, 30), "third", "").unwrap();
        let reasons: Vec<String> = lines(&path).iter().map(|l| l["reason"].as_str().unwrap().to_string()).collect();
        assert_eq!(reasons, ["first", "again", "third"]);
        assert!(w.reject("a.csv", &pos(7, 5, 40), "fourth", "").is_err(), "the count went on from the checkpoint");

        // A second writer of the same file waits for the first one's lock, then gives up.
        let wait = std::time::Duration::from_millis(300);
        let e = format!("{:#}", RejectWriter::open_append_within(&path, 3, w.mark(), wait).err().unwrap());
        assert!(e.contains("is locked by another kho load") && e.contains("300 ms"), "{e}");
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, w.mark().bytes, "the refused writer cut the file");
        drop(w);
        let e = format!("{:#}", RejectWriter::open_append(&path, 3, RejectMark { count: 9, bytes: 1 << 20 }).err().unwrap());
        assert!(e.contains("was it changed?"), "{e}");
    }
}
