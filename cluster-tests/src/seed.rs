//! Seeds of randomized tests: printed at the start, replayed with `KHO_TEST_SEED`.

/// Environment variable that fixes the seed of every randomized test (decimal or `0x` hex).
pub const SEED_ENV: &str = "KHO_TEST_SEED";

/// The seed for test `name`: `$KHO_TEST_SEED` if set, else a random one. Printed either way
/// (cargo shows it with the output of a failed test).
///
/// A seed replays the test's choices (keys, values, which node each request goes to); the
/// timing of concurrent clients and of the servers is not replayable.
pub fn test_seed(name: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => parse_seed(&text).unwrap_or_else(|| panic!("{SEED_ENV}=`{text}` is not a u64 (decimal or 0x-prefixed hex)")),
        Err(_) => rand::random(),
    };
    println!("{name}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("forty-two"), None);
    }
}
