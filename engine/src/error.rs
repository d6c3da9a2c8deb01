//! The engine's single error type.

use std::fmt::Write as _;

/// Everything that can go wrong in the engine.
///
/// Corruption (a checksum mismatch, a bad value header, an undecodable key) is always
/// reported as [`Error::Corruption`]: corrupt bytes are never returned as data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A RocksDB call failed; `op` names the engine operation.
    #[error("rocksdb {op}: {source}")]
    Rocks {
        /// The engine operation that failed, e.g. `"open"` or `"write"`.
        op: &'static str,
        /// The error reported by RocksDB.
        source: rocksdb::Error,
    },
    /// Stored bytes failed verification: checksum mismatch, bad header or undecodable key.
    #[error("corruption: {what}")]
    Corruption {
        /// What failed and on which key.
        what: String,
    },
    /// A key given by a caller cannot be encoded.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// A file-system operation failed; `op` names the engine operation.
    #[error("io {op}: {source}")]
    Io {
        /// The engine operation that failed.
        op: &'static str,
        /// The error reported by the operating system.
        source: std::io::Error,
    },
    /// A log refused an operation because an earlier write or sync of it failed: after a
    /// failed `fsync` the kernel may have dropped the unwritten pages, so the log stops
    /// (fail-stop) rather than retry and report them durable. Reopening it rereads what
    /// is really on disk.
    #[error("log stopped after an earlier failure, reopen it: {what}")]
    LogFailed {
        /// The failure that stopped the log: the log, the operation and the error.
        what: String,
    },
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Longest prefix of a key shown in error messages, in bytes.
const KEY_DISPLAY_BYTES_MAX: usize = 64;

/// Formats a key for an error message: lowercase hex of at most the first 64 bytes,
/// followed by the number of bytes left out, if any.
pub(crate) fn key_hex(key: &[u8]) -> String {
    let shown = &key[..key.len().min(KEY_DISPLAY_BYTES_MAX)];
    let mut out = String::with_capacity(shown.len() * 2 + 24);
    for byte in shown {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    if key.len() > shown.len() {
        let _ = write!(out, "…(+{} bytes)", key.len() - shown.len());
    }
    out
}

/// Builds the `map_err` closure of a failed RocksDB call. RocksDB's own corruption
/// reports (a block checksum mismatch in an SST file, say) are [`Error::Corruption`].
pub(crate) fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
    move |source| match source.kind() {
        rocksdb::ErrorKind::Corruption => Error::Corruption { what: format!("rocksdb {op}: {source}") },
        _ => Error::Rocks { op, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hex_truncates_long_keys() {
        assert_eq!(key_hex(b""), "");
        assert_eq!(key_hex(&[0x00, 0xab, 0xff]), "00abff");
        let long = vec![0x11; 70];
        assert_eq!(key_hex(&long), format!("{}…(+6 bytes)", "11".repeat(64)));
    }
}
