//! The header of every value stored in the Data column family, format version 1.
//!
//! ```text
//! offset 0: version u8 = 1
//! offset 1: flags   u8 = 0   (bit 0 compressed, bit 1 encrypted: reserved, must be 0)
//! offset 2: crc32   u32 little-endian, IEEE, over key ++ version ++ flags ++ payload
//! offset 6: payload
//! ```
//!
//! The checksum covers the storage key, so a value copied under another key fails
//! verification too. The layout is part of the on-disk format: see `docs/FORMATS-engine.md`.

use crate::error::{key_hex, Error, Result};

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
    let corrupt = |what: String| Error::Corruption {
        what: format!("value of key {}: {what}", key_hex(key)),
    };
    let Some((header, payload)) = stored.split_first_chunk::<VALUE_HEADER_LEN>() else {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {VALUE_HEADER_LEN}-byte header",
            stored.len()
        )));
    };
    let [version, flags, crc @ ..] = *header;
    if version != VALUE_FORMAT_V1 {
        return Err(corrupt(format!("unsupported format version {version}")));
    }
    if flags != FLAGS_V1 {
        return Err(corrupt(format!("unsupported flags 0x{flags:02x}")));
    }
    let stored_crc = u32::from_le_bytes(crc);
    let computed_crc = checksum(key, version, flags, payload);
    if stored_crc != computed_crc {
        return Err(corrupt(format!(
            "checksum mismatch: stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}"
        )));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::data_key;
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
                assert!(
                    is_corruption(decode_value(&key, &changed)),
                    "byte {at} ^ {xor:#04x}"
                );
            }
        }
    }

    #[test]
    fn error_names_key_and_failure() {
        let mut stored = encode_value(b"k", b"payload");
        stored[1] = 0b01;
        let err = decode_value(b"k", &stored).expect_err("flag set");
        assert_eq!(
            err.to_string(),
            "corruption: value of key 6b: unsupported flags 0x01"
        );
        let err = decode_value(b"k", &stored[..5]).expect_err("short");
        assert!(
            err.to_string().contains("shorter than the 6-byte header"),
            "{err}"
        );
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
