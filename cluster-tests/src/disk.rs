//! What nodes leave on disk: every file under a data directory, searched byte by byte for
//! plaintext, and the state of a directory tree (to prove a refused start-up touched
//! nothing).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Shortest needle [`find_all`] accepts, bytes: shorter ones could match binary data by chance.
pub const NEEDLE_BYTES_MIN: usize = 8;
/// Most directory levels [`files_under`] descends (a data directory has three or four).
const DEPTH_MAX: usize = 16;
/// Hits listed in [`SearchReport::describe_hits`], at most.
const HITS_SHOWN_MAX: usize = 30;

/// Every regular file under `dir`, recursively, sorted. Symbolic links are not followed.
pub fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, 0, &mut |path: &Path, meta: &std::fs::Metadata| {
        if meta.is_file() {
            out.push(path.to_path_buf());
        }
    })?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> io::Result<()> {
    assert!(depth <= DEPTH_MAX, "{} is more than {DEPTH_MAX} levels deep", dir.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Removed since read_dir (a node may be running): nothing to see.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        visit(&path, &meta);
        if meta.is_dir() {
            match walk(&path, depth + 1, visit) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Every occurrence of every needle in `haystack`, as (offset, needle index), by offset.
/// Needles must be at least [`NEEDLE_BYTES_MIN`] bytes long.
pub fn find_all(haystack: &[u8], needles: &[Vec<u8>]) -> Vec<(usize, usize)> {
    // Index the needles by their first four bytes; a table of the first two bytes skips
    // most positions before any hashing.
    let mut by_prefix: HashMap<[u8; 4], Vec<usize>> = HashMap::new();
    let mut first_two = vec![false; 1 << 16];
    for (i, needle) in needles.iter().enumerate() {
        assert!(
            needle.len() >= NEEDLE_BYTES_MIN,
            "needle {i} is {} bytes; at least {NEEDLE_BYTES_MIN} are needed to mean anything",
            needle.len()
        );
        let prefix: [u8; 4] = needle[..4].try_into().expect("four bytes");
        by_prefix.entry(prefix).or_default().push(i);
        first_two[(usize::from(needle[0]) << 8) | usize::from(needle[1])] = true;
    }
    let mut hits = Vec::new();
    if haystack.len() < 4 {
        return hits;
    }
    for at in 0..=haystack.len() - 4 {
        if !first_two[(usize::from(haystack[at]) << 8) | usize::from(haystack[at + 1])] {
            continue;
        }
        let prefix: [u8; 4] = haystack[at..at + 4].try_into().expect("four bytes");
        let Some(candidates) = by_prefix.get(&prefix) else { continue };
        for &i in candidates {
            if haystack[at..].starts_with(&needles[i]) {
                hits.push((at, i));
            }
        }
    }
    hits
}

/// One occurrence of a needle in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub path: PathBuf,
    pub offset: usize,
    pub needle: usize,
}

/// The result of searching files for needles.
#[derive(Debug, Default)]
pub struct SearchReport {
    /// Every file read, with its size in bytes.
    pub searched: Vec<(PathBuf, u64)>,
    /// Files listed but gone before they could be read (a running node removed them).
    pub vanished: Vec<PathBuf>,
    pub hits: Vec<Hit>,
}

impl SearchReport {
    pub fn bytes_searched(&self) -> u64 {
        self.searched.iter().map(|(_, len)| len).sum()
    }

    /// Which needles were found at least once.
    pub fn found(&self, needles: usize) -> Vec<bool> {
        let mut found = vec![false; needles];
        for hit in &self.hits {
            found[hit.needle] = true;
        }
        found
    }

    /// The searched files whose name satisfies `pred`.
    pub fn files_named(&self, pred: impl Fn(&str) -> bool) -> Vec<&Path> {
        self.searched.iter().filter(|(p, _)| p.file_name().is_some_and(|n| pred(&n.to_string_lossy()))).map(|(p, _)| p.as_path()).collect()
    }

    /// "N files, B bytes (V vanished)".
    pub fn summary(&self) -> String {
        format!("{} files, {} bytes ({} vanished while listed)", self.searched.len(), self.bytes_searched(), self.vanished.len())
    }

    /// The first hits, each as `file @ offset: label`, `labels[needle]` naming the needle.
    pub fn describe_hits(&self, labels: &[String]) -> String {
        let mut out = String::new();
        for hit in self.hits.iter().take(HITS_SHOWN_MAX) {
            out.push_str(&format!("  {} @ byte {}: {}\n", hit.path.display(), hit.offset, labels[hit.needle]));
        }
        if self.hits.len() > HITS_SHOWN_MAX {
            out.push_str(&format!("  … and {} more\n", self.hits.len() - HITS_SHOWN_MAX));
        }
        out
    }
}

/// Reads every file of `files` and finds every needle in it. A file that no longer exists
/// is listed in `vanished`; any other read error is returned.
pub fn search_files(files: &[PathBuf], needles: &[Vec<u8>]) -> io::Result<SearchReport> {
    let mut report = SearchReport::default();
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.vanished.push(path.clone());
                continue;
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("read {}: {e}", path.display()))),
        };
        for (offset, needle) in find_all(&bytes, needles) {
            report.hits.push(Hit { path: path.clone(), offset, needle });
        }
        report.searched.push((path.clone(), bytes.len() as u64));
    }
    Ok(report)
}

/// What is recorded of one entry of a directory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    /// "file", "dir", "symlink" or "other".
    pub kind: &'static str,
    pub len: u64,
    pub mode: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    /// CRC-32 of a file's contents.
    pub crc32: Option<u32>,
}

/// Every entry under a directory (the directory itself included, as `.`), by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeState {
    pub entries: BTreeMap<PathBuf, EntryState>,
}

impl TreeState {
    /// Records `root` and everything under it. Only for trees no process is changing.
    pub fn capture(root: &Path) -> io::Result<TreeState> {
        let mut entries = BTreeMap::new();
        entries.insert(PathBuf::from("."), entry_state(root, &std::fs::symlink_metadata(root)?)?);
        let mut failed = None;
        walk(root, 0, &mut |path: &Path, meta: &std::fs::Metadata| {
            if failed.is_some() {
                return;
            }
            let rel = path.strip_prefix(root).expect("walk stays under its root").to_path_buf();
            match entry_state(path, meta) {
                Ok(state) => {
                    entries.insert(rel, state);
                }
                Err(e) => failed = Some(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(TreeState { entries }),
        }
    }

    pub fn files(&self) -> usize {
        self.entries.values().filter(|e| e.kind == "file").count()
    }

    /// Every difference from `earlier`, one line each: added, removed or changed entries.
    pub fn differences_from(&self, earlier: &TreeState) -> Vec<String> {
        let mut out = Vec::new();
        for (path, before) in &earlier.entries {
            match self.entries.get(path) {
                None => out.push(format!("removed: {} ({before:?})", path.display())),
                Some(after) if after != before => out.push(format!("changed: {}: before {before:?}, after {after:?}", path.display())),
                Some(_) => {}
            }
        }
        for (path, after) in &self.entries {
            if !earlier.entries.contains_key(path) {
                out.push(format!("added: {} ({after:?})", path.display()));
            }
        }
        out
    }
}

fn entry_state(path: &Path, meta: &std::fs::Metadata) -> io::Result<EntryState> {
    let kind = if meta.is_file() {
        "file"
    } else if meta.is_dir() {
        "dir"
    } else if meta.file_type().is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let crc32 = if meta.is_file() { Some(crc32fast::hash(&std::fs::read(path)?)) } else { None };
    Ok(EntryState { kind, len: meta.len(), mode: meta.mode(), mtime: (meta.mtime(), meta.mtime_nsec()), crc32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn finds_every_occurrence_including_overlaps_and_the_end() {
        let hay = "xxNguyễn Văn An 1001yy Nguyễn Văn An 1001Trần Thị Lan 1002".as_bytes();
        let n = needles(&["Nguyễn Văn An 1001", "Trần Thị Lan 1002", "Lê Văn Nam 1003"]);
        let hits = find_all(hay, &n);
        let first = 2;
        let second = hay.len() - "Nguyễn Văn An 1001Trần Thị Lan 1002".len();
        let third = hay.len() - "Trần Thị Lan 1002".len();
        assert_eq!(hits, vec![(first, 0), (second, 0), (third, 1)]);

        let hay = b"0010901234560010901234";
        assert_eq!(find_all(hay, &needles(&["001090123456"])), vec![(0, 0)]);
        assert_eq!(find_all(b"aaaaaaaaaaaa", &needles(&["aaaaaaaaaa"])), vec![(0, 0), (1, 0), (2, 0)]);
        assert!(find_all(b"abc", &needles(&["abcdefghij"])).is_empty());
        assert!(find_all(b"", &needles(&["abcdefghij"])).is_empty());
    }

    #[test]
    #[should_panic(expected = "at least 8")]
    fn refuses_short_needles() {
        find_all(b"whatever", &needles(&["abc"]));
    }

    #[test]
    fn searches_files_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/000012.log"), b"....secret-value-1....").unwrap();
        std::fs::write(dir.path().join("MANIFEST-000001"), b"nothing here").unwrap();
        let files = files_under(dir.path()).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        let n = needles(&["secret-value-1", "secret-value-2"]);
        let report = search_files(&files, &n).unwrap();
        assert_eq!(report.hits, vec![Hit { path: dir.path().join("a/b/000012.log"), offset: 4, needle: 0 }]);
        assert_eq!(report.found(2), vec![true, false]);
        assert_eq!(report.files_named(|n| n.ends_with(".log")).len(), 1);
        assert_eq!(report.bytes_searched(), 22 + 12);
    }

    #[test]
    fn tree_state_sees_added_removed_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/keep"), b"same").unwrap();
        std::fs::write(dir.path().join("change"), b"before").unwrap();
        std::fs::write(dir.path().join("remove"), b"x").unwrap();
        let before = TreeState::capture(dir.path()).unwrap();
        assert_eq!(before.files(), 3);
        assert!(TreeState::capture(dir.path()).unwrap().differences_from(&before).is_empty());

        std::fs::write(dir.path().join("change"), b"after!").unwrap();
        std::fs::remove_file(dir.path().join("remove")).unwrap();
        std::fs::write(dir.path().join("sub/new"), b"n").unwrap();
        let diff = TreeState::capture(dir.path()).unwrap().differences_from(&before);
        let text = diff.join("\n");
        assert!(text.contains("changed: change"), "{text}");
        assert!(text.contains("removed: remove"), "{text}");
        assert!(text.contains("added: sub/new"), "{text}");
        assert!(!text.contains("sub/keep"), "{text}");
    }
}
