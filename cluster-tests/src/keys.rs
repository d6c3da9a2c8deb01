//! Master keys for clusters with encryption at rest: the key file a node's
//! `encryption.master_key_file` names, and the key id nodes report (docs/SECURITY.md).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// Length of a master key, bytes (AES-256).
pub const MASTER_KEY_BYTES: usize = 32;
/// The HMAC message of a master key's id: `HMAC-SHA-256(master, this)`, first 8 bytes.
const KEY_ID_MESSAGE: &[u8] = b"kho master key id v1";
/// Bytes of the HMAC kept as the key id.
const KEY_ID_BYTES: usize = 8;

/// A 256-bit master key. Test keys only: drawn from a seeded generator so a run replays.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_KEY_BYTES]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.id())
    }
}

impl MasterKey {
    pub fn random(rng: &mut impl Rng) -> MasterKey {
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        rng.fill(&mut bytes[..]);
        MasterKey(bytes)
    }

    /// The 64 lowercase hex characters a key file holds.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// The key id, 16 lowercase hex characters: the first 8 bytes of
    /// HMAC-SHA-256(key, "kho master key id v1"). Nodes name keys by it, never by the key.
    pub fn id(&self) -> String {
        hex(&hmac_sha256(&self.0, KEY_ID_MESSAGE)[..KEY_ID_BYTES])
    }

    /// Writes the key file: the hex key and a newline, created new with permissions `mode`
    /// (0o600 is what nodes accept; group or other access is refused). The file must lie
    /// outside every node's data directory.
    pub fn write_file(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        file.write_all(format!("{}\n", self.hex()).as_bytes())?;
        file.sync_all()?;
        // The umask may have cleared bits of `mode` at creation.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn key_file_is_hex_with_the_asked_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let key = MasterKey::random(&mut rng);
        let other = MasterKey::random(&mut rng);
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id().len(), 16);
        let path = dir.path().join("master.key");
        key.write_file(&path, 0o600).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert_eq!(text.trim_end(), key.hex());
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let open = dir.path().join("open.key");
        key.write_file(&open, 0o644).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(key.write_file(&path, 0o600).is_err(), "an existing key file is never overwritten");
    }
}
