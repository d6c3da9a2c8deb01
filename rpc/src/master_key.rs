//! The master key providers (a key file, or a command that prints the key) and the start-up
//! check of a data directory against the key (docs/SECURITY.md, "Start-up checks").
//!
//! Everything here runs before the node's storage is opened: a node with a wrong or missing
//! key refuses to start and leaves its data directory untouched.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kho_engine::crypto::{self, MasterKey};

use crate::config::EncryptionConfig;
use crate::ServerError;

/// Longest a `master_key_command` may run, milliseconds.
pub const MASTER_KEY_COMMAND_TIMEOUT_MS: u64 = 10_000;
/// Most bytes of a key command's output (or a key file) that are read.
const KEY_TEXT_BYTES_MAX: u64 = 4096;
/// The marker file of an encrypted data directory: `kho-encryption 1\nmaster_key_id <hex>\n`.
pub const MARKER_FILE: &str = "ENCRYPTION";

fn refuse(msg: String) -> ServerError {
    ServerError::Other(msg)
}

/// Loads the master key named by the config, if any, with a description of its provider.
pub fn load(config: &EncryptionConfig) -> Result<Option<(MasterKey, String)>, ServerError> {
    if let Some(path) = &config.master_key_file {
        let key = from_file(path)?;
        return Ok(Some((key, format!("encryption.master_key_file {}", path.display()))));
    }
    if let Some(cmd) = &config.master_key_command {
        let key = from_command(cmd)?;
        return Ok(Some((key, "encryption.master_key_command".to_string())));
    }
    Ok(None)
}

fn from_file(path: &Path) -> Result<MasterKey, ServerError> {
    let field = "encryption.master_key_file";
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("{field}: cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "{field}: {} has mode {mode:04o}; a master key must not be accessible by group or others (chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(KEY_TEXT_BYTES_MAX).read_to_string(&mut text))
        .map_err(|e| refuse(format!("{field}: cannot read {}: {e}", path.display())))?;
    let key = crypto::key_from_hex(&text).map_err(|e| refuse(format!("{field}: {}: {e}", path.display())))?;
    Ok(MasterKey::new(key))
}

fn from_command(cmd: &str) -> Result<MasterKey, ServerError> {
    let field = "encryption.master_key_command";
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| refuse(format!("{field}: cannot run `sh -c`: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stdout).take(KEY_TEXT_BYTES_MAX).read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(KEY_TEXT_BYTES_MAX).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_millis(MASTER_KEY_COMMAND_TIMEOUT_MS);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(refuse(format!("{field}: the command did not finish within {MASTER_KEY_COMMAND_TIMEOUT_MS} ms")));
            }
            Err(e) => return Err(refuse(format!("{field}: waiting for the command: {e}"))),
        }
    };
    let text = out.join().unwrap_or_default();
    let err_text = err.join().unwrap_or_default();
    if !status.success() {
        return Err(refuse(format!("{field}: the command failed ({status}): {}", err_text.trim())));
    }
    let key = crypto::key_from_hex(&text).map_err(|e| refuse(format!("{field}: the command's output: {e}")))?;
    Ok(MasterKey::new(key))
}

/// Checks `data_dir` against the key before anything opens it. An encrypted directory
/// needs the key it was written under; a directory seen with a key for the first time is
/// marked with the key's id.
pub fn check_data_dir(data_dir: &Path, key: Option<(&MasterKey, &str)>) -> Result<(), ServerError> {
    let marker = data_dir.join(MARKER_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let id = parse_marker(&text).ok_or_else(|| refuse(format!("{} is not a Kho encryption marker", marker.display())))?;
            match key {
                None => Err(refuse(format!(
                    "data directory {} is encrypted (master key id {id}); configure encryption.master_key_file or encryption.master_key_command",
                    data_dir.display()
                ))),
                Some((k, provider)) if k.id_hex() != id => Err(refuse(format!(
                    "wrong master key: data directory {} was written under master key id {id}, the configured key ({provider}) has id {}",
                    data_dir.display(),
                    k.id_hex()
                ))),
                Some(_) => Ok(()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some((k, _)) = key else { return Ok(()) };
            std::fs::create_dir_all(data_dir).map_err(|e| refuse(format!("data_dir {}: {e}", data_dir.display())))?;
            let tmp = data_dir.join(format!("{MARKER_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, format!("kho-encryption 1\nmaster_key_id {}\n", k.id_hex()).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &marker)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|e| refuse(format!("cannot write {}: {e}", marker.display())))?;
            tracing::info!(master_key_id = %k.id_hex(), "data directory marked as encrypted");
            Ok(())
        }
        Err(e) => Err(refuse(format!("cannot read {}: {e}", marker.display()))),
    }
}

fn parse_marker(text: &str) -> Option<String> {
    let mut lines = text.lines();
    if lines.next()? != "kho-encryption 1" {
        return None;
    }
    let id = lines.next()?.strip_prefix("master_key_id ")?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str, hex: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn key_file_must_be_private_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let ok = key_file(dir.path(), "ok", &"11".repeat(32), 0o600);
        assert!(from_file(&ok).is_ok());
        let open = key_file(dir.path(), "open", &"11".repeat(32), 0o644);
        assert!(from_file(&open).unwrap_err().to_string().contains("mode 0644"));
        let short = key_file(dir.path(), "short", "1234", 0o600);
        assert!(from_file(&short).unwrap_err().to_string().contains("expected 64 hex digits"));
        assert!(from_file(&dir.path().join("missing")).unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn key_command_prints_the_key_or_fails_clearly() {
        let k = from_command(&format!("echo {}", "22".repeat(32))).unwrap();
        assert_eq!(k.id(), MasterKey::new(crypto::key_from_hex(&"22".repeat(32)).unwrap()).id());
        let e = from_command("echo nope >&2; exit 3").unwrap_err().to_string();
        assert!(e.contains("the command failed") && e.contains("nope"), "{e}");
        assert!(from_command("echo xyz").unwrap_err().to_string().contains("output"));
    }

    #[test]
    fn data_dir_is_marked_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = MasterKey::new(crypto::key_from_hex(&"aa".repeat(32)).unwrap());
        let b = MasterKey::new(crypto::key_from_hex(&"bb".repeat(32)).unwrap());
        check_data_dir(&data, None).unwrap();
        assert!(!data.exists(), "no key: nothing is created");
        check_data_dir(&data, Some((&a, "file a"))).unwrap();
        check_data_dir(&data, Some((&a, "file a"))).unwrap();
        let e = check_data_dir(&data, Some((&b, "file b"))).unwrap_err().to_string();
        assert!(e.contains("wrong master key") && e.contains(&a.id_hex()) && e.contains(&b.id_hex()) && e.contains("file b"), "{e}");
        let e = check_data_dir(&data, None).unwrap_err().to_string();
        assert!(e.contains("is encrypted") && e.contains(&a.id_hex()), "{e}");
    }
}
