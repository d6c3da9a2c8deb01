//! The master key file of a local cluster that `kho demo` or `kho bench-compare` starts.
//!
//! The file holds 32 bytes from the operating system's random source as 64 lowercase hex
//! characters and a newline: the format of `encryption.master_key_file` (docs/CONFIG.md).
//! It is created with mode 0600 in a directory of mode 0700, outside every node's data_dir
//! (the key must not sit next to the data it protects), and kept for later runs: data
//! written under it cannot be read under another key.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use rand::TryRngCore as _;

/// Bytes of a master key (AES-256, HMAC-SHA-256).
pub const MASTER_KEY_BYTES: usize = 32;
/// Name of the key file in its directory.
pub const FILE_NAME: &str = "master.key";
/// Mode of the key file: the owner reads and writes it, nobody else has access.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the key's directory.
pub const DIR_MODE: u32 = 0o700;

/// A master key file ready for the nodes' `encryption.master_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyFile {
    pub path: PathBuf,
    /// True when this call wrote a new key; false when an existing one is reused.
    pub created: bool,
}

/// The key as the file holds it: 64 lowercase hex characters and a newline.
pub fn key_text(key: &[u8; MASTER_KEY_BYTES]) -> String {
    let mut out = String::with_capacity(2 * MASTER_KEY_BYTES + 1);
    for b in key {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble is a hex digit"));
        out.push(char::from_digit(u32::from(b & 0x0f), 16).expect("a nibble is a hex digit"));
    }
    out.push('\n');
    out
}

/// Whether a file's text is a master key: 64 hex characters, optionally a trailing newline.
pub fn is_key_text(text: &str) -> bool {
    let t = text.strip_suffix('\n').unwrap_or(text);
    t.len() == 2 * MASTER_KEY_BYTES && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `dir/master.key`: reused when it exists (after checking its mode and contents), else
/// written with a fresh random key. `dir` is created with mode 0700 when missing, and an
/// existing `dir` is restricted to 0700.
pub fn ensure(dir: &Path) -> anyhow::Result<MasterKeyFile> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).with_context(|| format!("create {}", dir.display()))?;
    // `mode` applies only to directories the builder creates (and the umask may clear bits).
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).with_context(|| format!("chmod {:o} {}", DIR_MODE, dir.display()))?;
    let path = dir.join(FILE_NAME);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            check_existing(&path, &meta)?;
            return Ok(MasterKeyFile { path, created: false });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("stat {}", path.display()))),
    }
    let mut key = [0u8; MASTER_KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| anyhow!("cannot read {MASTER_KEY_BYTES} random bytes from the operating system: {e}"))?;
    let text = key_text(&key);
    // create_new: never overwrite a key that appeared meanwhile (it may protect data).
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))?;
    f.sync_all().with_context(|| format!("sync {}", path.display()))?;
    // The directory entry too: a key lost in a crash would make the data unreadable.
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("sync {}", dir.display()))?;
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} was created with mode {mode:o}", path.display());
    Ok(MasterKeyFile { path, created: true })
}

/// An existing key file must be a regular file, closed to group and others (the server
/// refuses it otherwise), and hold a key.
fn check_existing(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    if !meta.is_file() {
        bail!("{} is not a regular file; move it away", path.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{} has mode {mode:o}: group or others may read the master key; run `chmod 600 {}`", path.display(), path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    if !is_key_text(&text) {
        bail!(
            "{} does not hold a master key ({} hex characters and a newline); it is kept as it is, since \
             data may have been written under it",
            path.display(),
            2 * MASTER_KEY_BYTES
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn text_is_64_lowercase_hex_and_a_newline() {
        let mut key = [0u8; MASTER_KEY_BYTES];
        key[0] = 0xab;
        key[31] = 0x0f;
        let t = key_text(&key);
        assert_eq!(t.len(), 65);
        assert!(t.starts_with("ab00"), "{t}");
        assert!(t.ends_with("0f\n"), "{t}");
        assert!(is_key_text(&t));
        assert!(is_key_text(t.trim_end()));
        assert!(!is_key_text(&t[1..]));
        assert!(!is_key_text(&t.replace('a', "g")));
    }

    #[test]
    fn created_once_private_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let first = ensure(&dir).unwrap();
        assert!(first.created);
        assert_eq!(first.path, dir.join("master.key"));
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert!(is_key_text(&text) && text.ends_with('\n'), "{text}");
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text}");
        assert_eq!(std::fs::metadata(&first.path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let again = ensure(&dir).unwrap();
        assert_eq!(again, MasterKeyFile { path: first.path.clone(), created: false });
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), text);
        // Two fresh keys differ.
        let other = ensure(&tmp.path().join("other")).unwrap();
        assert_ne!(std::fs::read_to_string(other.path).unwrap(), text);
    }

    #[test]
    fn an_open_or_malformed_key_file_is_refused_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let k = ensure(&dir).unwrap();
        std::fs::set_permissions(&k.path, Permissions::from_mode(0o644)).unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::write(&k.path, "not a key\n").unwrap();
        std::fs::set_permissions(&k.path, Permissions::from_mode(0o600)).unwrap();
        let e = ensure(&dir).unwrap_err().to_string();
        assert!(e.contains("does not hold a master key"), "{e}");
        assert_eq!(std::fs::read_to_string(&k.path).unwrap(), "not a key\n");
    }
}
