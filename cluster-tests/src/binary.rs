//! Finding the `kho` binary that the tests start.

use std::path::{Path, PathBuf};

/// Environment variable that names the `kho` binary explicitly.
pub const KHO_BIN_ENV: &str = "KHO_BIN";

/// The `kho` binary: `$KHO_BIN` if set, else `target/<profile>/kho` found by walking up from
/// the test executable (which cargo puts in `target/<profile>/deps/`).
///
/// Panics with instructions when there is none: the tests never build it themselves.
pub fn kho_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(KHO_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{KHO_BIN_ENV}={} is not a file; unset it or point it at a built `kho` binary", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the path of the test executable");
    match find_upwards(&exe) {
        Some(path) => path,
        None => panic!(
            "no `kho` binary found in any parent directory of {}.\n\
             Build it first with `cargo build --bin kho` (same profile and CARGO_TARGET_DIR as \
             the tests), or set {KHO_BIN_ENV}=/path/to/kho.",
            exe.display()
        ),
    }
}

/// The first `<ancestor>/kho` that is a file, starting from the directory of `exe`.
fn find_upwards(exe: &Path) -> Option<PathBuf> {
    exe.ancestors().skip(1).map(|dir| dir.join("kho")).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_binary_next_to_deps() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("target/debug");
        std::fs::create_dir_all(profile.join("deps")).unwrap();
        std::fs::write(profile.join("kho"), b"").unwrap();
        let exe = profile.join("deps/cluster-1234");
        assert_eq!(find_upwards(&exe), Some(profile.join("kho")));
    }

    #[test]
    fn a_directory_named_kho_is_not_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/kho")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/deps")).unwrap();
        assert_eq!(find_upwards(&dir.path().join("a/deps/t")), None);
    }
}
