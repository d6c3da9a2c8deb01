//! The header of every value stored in the Data column family.
//!
//! Format version 1, plaintext:
//! ```text
//! offset 0: version u8 = 1
//! offset 1: flags   u8 = 0   (bit 0 compressed, bit 1 encrypted: reserved, must be 0)
//! offset 2: crc32   u32 little-endian, IEEE, over key ++ version ++ flags ++ payload
//! offset 6: payload
//! ```
//!
//! Format version 2, encrypted (docs/SECURITY.md):
//! ```text
//! offset 0:  version     u8 = 2
//! offset 1:  flags       u8 = 0x02 (encrypted)
//! offset 2:  key version u32 big-endian: the tenant key version that sealed the value
//! offset 6:  nonce       12 bytes
//! offset 18: AES-256-GCM ciphertext of the payload ++ tag (16 bytes)
//! ```
//! The associated data is `key ++ bytes 0..18`: a value moved under another key, or with
//! a changed header, fails authentication.
//!
//! The checksum or the tag covers the storage key, so a value copied under another key
//! fails verification too. The layout is part of the on-disk format: see `docs/FORMATS.md`.

use crate::crypto::{DataKey, GCM_NONCE_BYTES, TAG_BYTES};
use crate::error::{key_hex, Error, Result};

/// The format of encrypted values.
pub const VALUE_FORMAT_V2: u8 = 2;
/// Flags of format 2: bit 1, encrypted.
const FLAGS_V2: u8 = 0x02;
/// Length of the header of an encrypted value: version, flags, key version, nonce.
pub const SEALED_HEADER_LEN: usize = 2 + 4 + GCM_NONCE_BYTES;
/// Bytes an encrypted value takes beyond its payload: header and tag.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + TAG_BYTES;

/// What a stored value's header says, checked without any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// Format 1, checksum verified: the payload.
    Plain(&'a [u8]),
    /// Format 2, sealed under this version of its tenant's key.
    Sealed { key_version: u32 },
}

fn corruption(key: &[u8], what: impl std::fmt::Display) -> Error {
    Error::Corruption { what: format!("value of key {}: {what}", key_hex(key)) }
}

/// Seals `payload` stored under `key` with one version of its tenant's key (format 2).
pub fn seal_value(key: &[u8], payload: &[u8], data_key: &DataKey, key_version: u32, nonce: [u8; GCM_NONCE_BYTES]) -> Vec<u8> {
    let mut header = [0u8; SEALED_HEADER_LEN];
    header[0] = VALUE_FORMAT_V2;
    header[1] = FLAGS_V2;
    header[2..6].copy_from_slice(&key_version.to_be_bytes());
    header[6..].copy_from_slice(&nonce);
    let mut aad = Vec::with_capacity(key.len() + SEALED_HEADER_LEN);
    aad.extend_from_slice(key);
    aad.extend_from_slice(&header);
    let sealed = data_key.seal(&nonce, &aad, payload);
    let mut out = Vec::with_capacity(SEALED_HEADER_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&sealed);
    out
}

/// Checks the header of a stored value: a format 1 value is fully verified (checksum); a
/// format 2 value's key version is returned, to be opened with [`open_value`].
pub fn inspect<'a>(key: &[u8], stored: &'a [u8]) -> Result<Stored<'a>> {
    match stored.first() {
        Some(&VALUE_FORMAT_V2) => {
            if stored.len() < SEALED_OVERHEAD {
                return Err(corruption(key, format!("{} bytes, shorter than an encrypted value's {SEALED_OVERHEAD}", stored.len())));
            }
            if stored[1] != FLAGS_V2 {
                return Err(corruption(key, format!("unsupported flags 0x{:02x} of an encrypted value", stored[1])));
            }
            Ok(Stored::Sealed { key_version: u32::from_be_bytes(stored[2..6].try_into().expect("4 bytes")) })
        }
        _ => decode_value(key, stored).map(Stored::Plain),
    }
}

/// Opens an encrypted (format 2) value stored under `key` with the key version its header
/// names. Any change to key, header, ciphertext or tag is [`Error::Corruption`].
pub fn open_value(key: &[u8], stored: &[u8], data_key: &DataKey) -> Result<Vec<u8>> {
    let Stored::Sealed { key_version } = inspect(key, stored)? else {
        return Err(corruption(key, "not an encrypted value"));
    };
    let (header, sealed) = stored.split_at(SEALED_HEADER_LEN);
    let nonce: [u8; GCM_NONCE_BYTES] = header[6..].try_into().expect("12 bytes");
    let mut aad = Vec::with_capacity(key.len() + SEALED_HEADER_LEN);
    aad.extend_from_slice(key);
    aad.extend_from_slice(header);
    data_key.open(&nonce, &aad, sealed).map_err(|e| corruption(key, format!("encrypted under key version {key_version}: {e}")))
}

/// The value format written by this version of the engine.
pub const VALUE_FORMAT_V1: u8 = 1;

/// Length of the value header: version u8 ++ flags u8 ++ crc32 u32.
pub const VALUE_HEADER_LEN: usize = 6;

/// Flags written in version 1: no compression, no encryption.
const FLAGS_V1: u8 = 0;

/// The checksum of a value: crc32 (IEEE) of `key ++ version ++ flags ++ payload`.
fn checksum(key: &[u8], version: u8, flags: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&[version, flags]);
    hasher.update(payload);
    hasher.finalize()
}

/// Encodes `payload` stored under `key`:
/// `[version u8 = 1][flags u8 = 0][crc32 u32 LE][payload]`.
pub fn encode_value(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let crc = checksum(key, VALUE_FORMAT_V1, FLAGS_V1, payload);
    let mut out = Vec::with_capacity(VALUE_HEADER_LEN + payload.len());
    out.push(VALUE_FORMAT_V1);
    out.push(FLAGS_V1);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    debug_assert_eq!(decode_value(key, &out).ok(), Some(payload));
    out
}

/// Verifies the version, flags and checksum of a value stored under `key` and returns
/// its payload.
///
/// Any mismatch is an [`Error::Corruption`] naming the key (hex, first 64 bytes) and what
/// failed; corrupt bytes are never returned.
pub fn decode_value<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8]> {
    let corrupt = |what: String| Error::Corruption { what: format!("value of key {}: {what}", key_hex(key)) };
    let Some((header, payload)) = stored.split_first_chunk::<VALUE_HEADER_LEN>() else {
        return Err(corrupt(format!("{} bytes, shorter than the {VALUE_HEADER_LEN}-byte header", stored.len())));
    };
    let [version, flags, crc @ ..] = *header;
    if version == VALUE_FORMAT_V2 {
        return Err(corrupt("encrypted value (format 2) read without its tenant key".to_string()));
    }
    if version != VALUE_FORMAT_V1 {
        return Err(corrupt(format!("unsupported format version {version}")));
    }
    if flags != FLAGS_V1 {
        return Err(corrupt(format!("unsupported flags 0x{flags:02x}")));
    }
    let stored_crc = u32::from_le_bytes(crc);
    let computed_crc = checksum(key, version, flags, payload);
    if stored_crc != computed_crc {
        return Err(corrupt(format!("checksum mismatch: stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}")));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::data_key;
    use crate::keys::data_key as data_key_of;
    use proptest::prelude::*;

    fn is_corruption<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(Error::Corruption { .. }))
    }

    #[test]
    fn worked_example_matches_the_format_document() {
        let key = data_key(1, 2, b"a\0b", 3, b"q");
        let stored = encode_value(&key, b"v");
        assert_eq!(crate::error::key_hex(&stored), "010077b3fa4276");
    }

    #[test]
    fn every_single_byte_change_of_the_example_is_corruption() {
        let key = data_key(1, 2, b"a\0b", 3, b"q");
        let stored = encode_value(&key, b"payload");
        for at in 0..stored.len() {
            for xor in 1..=u8::MAX {
                let mut changed = stored.clone();
                changed[at] ^= xor;
                assert!(is_corruption(decode_value(&key, &changed)), "byte {at} ^ {xor:#04x}");
            }
        }
    }

    #[test]
    fn error_names_key_and_failure() {
        let mut stored = encode_value(b"k", b"payload");
        stored[1] = 0b01;
        let err = decode_value(b"k", &stored).expect_err("flag set");
        assert_eq!(err.to_string(), "corruption: value of key 6b: unsupported flags 0x01");
        let err = decode_value(b"k", &stored[..5]).expect_err("short");
        assert!(err.to_string().contains("shorter than the 6-byte header"), "{err}");
    }

    fn tenant_key(byte: u8) -> DataKey {
        DataKey::new(&[byte; 32])
    }

    #[test]
    fn sealed_worked_example_matches_the_format_document() {
        let key = data_key(1, 2, b"a\0b", 3, b"q");
        let stored = seal_value(&key, b"v", &DataKey::new(&[7; 32]), 1, [9; 12]);
        assert_eq!(crate::error::key_hex(&stored), "020200000001090909090909090909090909516d47adaf1ebe5b2910cc89118f57db55");
    }

    #[test]
    fn sealed_values_hide_the_payload_and_round_trip() {
        let key = data_key_of(1, 2, b"001085012345", 1, b"name");
        let stored = seal_value(&key, b"Nguyen Van An", &tenant_key(7), 3, [9; 12]);
        assert_eq!(stored.len(), SEALED_OVERHEAD + 13);
        assert_eq!(&stored[..6], &[2, 2, 0, 0, 0, 3]);
        assert!(!stored.windows(6).any(|w| w == b"Nguyen"));
        assert_eq!(inspect(&key, &stored).unwrap(), Stored::Sealed { key_version: 3 });
        assert_eq!(open_value(&key, &stored, &tenant_key(7)).unwrap(), b"Nguyen Van An");
        // Deterministic for one nonce: replicas write the same bytes.
        assert_eq!(seal_value(&key, b"Nguyen Van An", &tenant_key(7), 3, [9; 12]), stored);
    }

    #[test]
    fn every_single_byte_change_of_a_sealed_value_is_corruption() {
        let key = data_key_of(1, 2, b"r", 1, b"q");
        let stored = seal_value(&key, b"payload", &tenant_key(7), 1, [1; 12]);
        for at in 0..stored.len() {
            for xor in [0x01u8, 0x80, 0xff] {
                let mut changed = stored.clone();
                changed[at] ^= xor;
                let read = inspect(&key, &changed).and_then(|_| open_value(&key, &changed, &tenant_key(7)));
                assert!(is_corruption(read), "byte {at} ^ {xor:#04x}");
            }
        }
    }

    #[test]
    fn sealed_value_fails_under_another_key_or_storage_key() {
        let key = data_key_of(1, 2, b"r", 1, b"q");
        let stored = seal_value(&key, b"payload", &tenant_key(7), 1, [1; 12]);
        assert!(is_corruption(open_value(&key, &stored, &tenant_key(8))));
        let other_tenant = data_key_of(2, 2, b"r", 1, b"q");
        assert!(is_corruption(open_value(&other_tenant, &stored, &tenant_key(7))));
        let err = decode_value(&key, &stored).expect_err("plain read of a sealed value");
        assert!(err.to_string().contains("without its tenant key"), "{err}");
        assert!(is_corruption(open_value(&key, &stored[..SEALED_OVERHEAD - 1], &tenant_key(7))));
        assert!(is_corruption(open_value(&key, &encode_value(&key, b"x"), &tenant_key(7))));
    }

    proptest! {
        #[test]
        fn round_trips(key in prop::collection::vec(any::<u8>(), 0..40), payload in prop::collection::vec(any::<u8>(), 0..100)) {
            let stored = encode_value(&key, &payload);
            prop_assert_eq!(stored.len(), VALUE_HEADER_LEN + payload.len());
            prop_assert_eq!(stored[0], VALUE_FORMAT_V1);
            prop_assert_eq!(stored[1], 0);
            prop_assert_eq!(decode_value(&key, &stored).expect("verifies"), payload.as_slice());
        }

        #[test]
        fn any_single_byte_change_is_corruption(
            key in prop::collection::vec(any::<u8>(), 0..40),
            payload in prop::collection::vec(any::<u8>(), 0..100),
            position in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut stored = encode_value(&key, &payload);
            let at = position.index(stored.len());
            stored[at] ^= xor;
            prop_assert!(is_corruption(decode_value(&key, &stored)));
        }

        #[test]
        fn truncated_or_extended_value_is_corruption(
            key in prop::collection::vec(any::<u8>(), 0..40),
            payload in prop::collection::vec(any::<u8>(), 0..100),
            cut in any::<prop::sample::Index>(),
            extra in any::<u8>(),
        ) {
            let stored = encode_value(&key, &payload);
            prop_assert!(is_corruption(decode_value(&key, &stored[..cut.index(stored.len())])));
            let mut longer = stored.clone();
            longer.push(extra);
            prop_assert!(is_corruption(decode_value(&key, &longer)));
        }

        #[test]
        fn value_under_another_key_is_corruption(
            key in prop::collection::vec(any::<u8>(), 0..40),
            other in prop::collection::vec(any::<u8>(), 0..40),
            payload in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            prop_assume!(key != other);
            let stored = encode_value(&key, &payload);
            prop_assert!(is_corruption(decode_value(&other, &stored)));
        }
    }
}
