//! The ciphers of encryption at rest (docs/SECURITY.md). Every primitive comes from the
//! RustCrypto crates (`aes-gcm`, `chacha20poly1305`, `hmac`, `sha2`, `hkdf`); this module
//! only chooses keys, nonces and associated data.
//!
//! - [`MasterKey`]: 32 bytes from the node's key provider. It wraps tenant keys
//!   (AES-256-GCM) and derives the [`LogCipher`] (HKDF-SHA-256).
//! - [`DataKey`]: one version of a tenant's value key, AES-256-GCM (see [`crate::value`]).
//! - [`RowHasher`]: a tenant's row-key hashing key, HMAC-SHA-256.
//! - [`LogCipher`]: XChaCha20-Poly1305 with random 192-bit nonces, for Raft log entries and
//!   snapshot chunks, whose number has no practical bound.

use std::fmt;

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of every key, bytes (256 bits).
pub const KEY_BYTES: usize = 32;
/// Length of an AES-256-GCM nonce, bytes.
pub const GCM_NONCE_BYTES: usize = 12;
/// Length of an XChaCha20-Poly1305 nonce, bytes.
pub const XNONCE_BYTES: usize = 24;
/// Length of an AEAD tag, bytes.
pub const TAG_BYTES: usize = 16;
/// Length of a master key id, bytes.
pub const MASTER_KEY_ID_BYTES: usize = 8;
/// Length of a wrapped key: nonce ++ ciphertext ++ tag.
pub const WRAPPED_KEY_BYTES: usize = GCM_NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// Length of a hashed row key, bytes.
pub const ROW_HASH_BYTES: usize = 32;

/// A key's secret bytes, zeroed when dropped.
pub type Secret = Zeroizing<[u8; KEY_BYTES]>;

/// Why sealed bytes could not be opened: they were changed, or the key is not theirs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CryptoError(pub String);

/// 32 random bytes from the operating system.
pub fn random_key() -> Secret {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    OsRng.fill_bytes(key.as_mut());
    key
}

/// Random bytes for nonces: the thread's CSPRNG (rand's `ThreadRng`, ChaCha12 seeded from
/// the operating system and reseeded every 64 KiB). Not `OsRng`: a system call per write
/// and per log entry was a measurable share of a node's CPU. Keys still come from `OsRng`.
fn fill_nonce(out: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::rng(), out);
}

/// A random 96-bit nonce seed for one write command (see [`nonce_at`]).
pub fn random_nonce_seed() -> [u8; GCM_NONCE_BYTES] {
    let mut seed = [0u8; GCM_NONCE_BYTES];
    fill_nonce(&mut seed);
    seed
}

/// The nonce of the `index`-th value sealed by one command: `seed + index` modulo 2^96,
/// big-endian. Distinct for every value of the command; the seed is random per command.
pub fn nonce_at(seed: [u8; GCM_NONCE_BYTES], index: u32) -> [u8; GCM_NONCE_BYTES] {
    let mut out = seed;
    let mut carry = u64::from(index);
    for byte in out.iter_mut().rev() {
        if carry == 0 {
            break;
        }
        let sum = u64::from(*byte) + (carry & 0xff);
        *byte = sum as u8;
        carry = (carry >> 8) + (sum >> 8);
    }
    out
}

/// Parses 64 hex digits (surrounding whitespace ignored) into a key.
pub fn key_from_hex(text: &str) -> Result<Secret, String> {
    let text = text.trim();
    if text.len() != 2 * KEY_BYTES {
        return Err(format!("expected {} hex digits (a {KEY_BYTES}-byte key), found {} characters", 2 * KEY_BYTES, text.len()));
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).ok_or_else(|| format!("character {:?} is not a hex digit", c as char));
        key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(key)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster's master key. Never stored by Kho: it comes from the node's key provider
/// at every start.
pub struct MasterKey {
    key: Secret,
    id: [u8; MASTER_KEY_ID_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", self.id_hex())
    }
}

impl MasterKey {
    pub fn new(key: Secret) -> MasterKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
        mac.update(b"kho master key id v1");
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; MASTER_KEY_ID_BYTES];
        id.copy_from_slice(&digest[..MASTER_KEY_ID_BYTES]);
        MasterKey { key, id }
    }

    /// A public fingerprint of the key: the first 8 bytes of
    /// HMAC-SHA-256(key, "kho master key id v1"). Names the key in messages and records.
    pub fn id(&self) -> [u8; MASTER_KEY_ID_BYTES] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.key.as_ref()).expect("32-byte key")
    }

    /// Wraps a key: `nonce (12) ++ AES-256-GCM(master, nonce, secret, aad) (48)`.
    pub fn wrap(&self, aad: &[u8], secret: &[u8; KEY_BYTES]) -> Vec<u8> {
        let mut nonce = [0u8; GCM_NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad })
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        let mut out = Vec::with_capacity(WRAPPED_KEY_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Unwraps what [`MasterKey::wrap`] made with the same `aad`.
    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Secret, CryptoError> {
        if wrapped.len() != WRAPPED_KEY_BYTES {
            return Err(CryptoError(format!("wrapped key is {} bytes, expected {WRAPPED_KEY_BYTES}", wrapped.len())));
        }
        let (nonce, sealed) = wrapped.split_at(GCM_NONCE_BYTES);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
                .map_err(|_| CryptoError("wrapped key does not authenticate under this master key".into()))?,
        );
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        key.copy_from_slice(&plain);
        Ok(key)
    }

    /// The log key: HKDF-SHA-256(master, info "kho raft log key v1"). Every node with the
    /// cluster's master key derives the same one, so snapshots stream between them as is.
    pub fn log_cipher(&self) -> LogCipher {
        let hk = hkdf::Hkdf::<Sha256>::new(None, self.key.as_ref());
        let mut okm = Zeroizing::new([0u8; KEY_BYTES]);
        hk.expand(b"kho raft log key v1", okm.as_mut()).expect("32 bytes is a valid HKDF length");
        LogCipher { cipher: XChaCha20Poly1305::new_from_slice(okm.as_ref()).expect("32-byte key") }
    }
}

/// One version of a tenant's value key (AES-256-GCM).
#[derive(Clone)]
pub struct DataKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn new(secret: &[u8; KEY_BYTES]) -> DataKey {
        DataKey { cipher: Aes256Gcm::new_from_slice(secret).expect("32-byte key") }
    }

    /// `ciphertext ++ tag` of `plain`.
    pub fn seal(&self, nonce: &[u8; GCM_NONCE_BYTES], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        self.cipher
            .encrypt(Nonce::from_slice(nonce), Payload { msg: plain, aad })
            .expect("AES-GCM encryption fails only for inputs over 64 GiB")
    }

    pub fn open(&self, nonce: &[u8; GCM_NONCE_BYTES], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| CryptoError("authentication failed (changed bytes, or another key)".into()))
    }
}

/// A tenant's row-key hashing key (HMAC-SHA-256).
#[derive(Clone)]
pub struct RowHasher {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for RowHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RowHasher(..)")
    }
}

impl RowHasher {
    pub fn new(secret: &[u8; KEY_BYTES]) -> RowHasher {
        RowHasher { mac: <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length") }
    }

    /// The stored row key of `row` in table `table`:
    /// HMAC-SHA-256(key, "kho row v1" ++ table u32 BE ++ row). The table id makes the same
    /// identifier hash differently in two tables.
    pub fn hash(&self, table: u32, row: &[u8]) -> [u8; ROW_HASH_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(b"kho row v1");
        mac.update(&table.to_be_bytes());
        mac.update(row);
        mac.finalize().into_bytes().into()
    }
}

/// XChaCha20-Poly1305 under the log key, with a random 192-bit nonce per message.
#[derive(Clone)]
pub struct LogCipher {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for LogCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogCipher(..)")
    }
}

impl LogCipher {
    /// Appends `nonce (24) ++ ciphertext ++ tag (16)` of `plain` to `out`.
    pub fn seal_into(&self, out: &mut Vec<u8>, aad: &[u8], plain: &[u8]) {
        let mut nonce = [0u8; XNONCE_BYTES];
        fill_nonce(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encryption fails only for inputs over 256 GiB");
        out.reserve(XNONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
    }

    /// Opens what [`LogCipher::seal_into`] appended.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < XNONCE_BYTES + TAG_BYTES {
            return Err(CryptoError(format!("{} sealed bytes are fewer than nonce and tag", sealed.len())));
        }
        let (nonce, rest) = sealed.split_at(XNONCE_BYTES);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: rest, aad })
            .map_err(|_| CryptoError("authentication failed (changed bytes, or another master key)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey::new(Zeroizing::new([byte; KEY_BYTES]))
    }

    #[test]
    fn nonce_at_adds_with_carry() {
        let seed = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe];
        assert_eq!(nonce_at(seed, 0), seed);
        assert_eq!(nonce_at(seed, 1)[10..], [0xff, 0xff]);
        assert_eq!(nonce_at(seed, 2)[9..], [0x01, 0x00, 0x00]);
        assert_eq!(nonce_at([0xff; 12], 1), [0; 12]);
        let distinct: std::collections::HashSet<_> = (0..10_000).map(|i| nonce_at([7; 12], i)).collect();
        assert_eq!(distinct.len(), 10_000);
    }

    #[test]
    fn hex_keys_parse_strictly() {
        let k = key_from_hex(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(*k, [0xab; 32]);
        assert!(key_from_hex(&"ab".repeat(31)).unwrap_err().contains("expected 64 hex digits"));
        assert!(key_from_hex(&format!("{}zz", "ab".repeat(31))).unwrap_err().contains("not a hex digit"));
    }

    #[test]
    fn wrapped_keys_open_only_with_their_master_and_aad() {
        let secret = random_key();
        let wrapped = master(1).wrap(b"tenant a", &secret);
        assert_eq!(wrapped.len(), WRAPPED_KEY_BYTES);
        assert_eq!(*master(1).unwrap(b"tenant a", &wrapped).unwrap(), *secret);
        assert!(master(2).unwrap(b"tenant a", &wrapped).is_err());
        assert!(master(1).unwrap(b"tenant b", &wrapped).is_err());
        for at in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[at] ^= 1;
            assert!(master(1).unwrap(b"tenant a", &bad).is_err(), "byte {at}");
        }
        assert_ne!(master(1).id(), master(2).id());
    }

    #[test]
    fn log_cipher_is_derived_and_authenticates() {
        let mut sealed = Vec::new();
        master(1).log_cipher().seal_into(&mut sealed, b"aad", b"entry");
        assert_eq!(master(1).log_cipher().open(b"aad", &sealed).unwrap(), b"entry");
        assert!(master(2).log_cipher().open(b"aad", &sealed).is_err());
        assert!(master(1).log_cipher().open(b"other", &sealed).is_err());
        assert!(!sealed.windows(5).any(|w| w == b"entry"));
    }

    #[test]
    fn row_hashes_depend_on_key_table_and_row() {
        let a = RowHasher::new(&[1; 32]);
        let b = RowHasher::new(&[2; 32]);
        assert_eq!(a.hash(1, b"001085012345"), a.hash(1, b"001085012345"));
        assert_ne!(a.hash(1, b"001085012345"), a.hash(2, b"001085012345"));
        assert_ne!(a.hash(1, b"001085012345"), b.hash(1, b"001085012345"));
    }
}
