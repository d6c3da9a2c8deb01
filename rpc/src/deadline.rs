//! Request deadlines as absolute wall-clock times, so that they survive forwarding.
//!
//! A client's `grpc-timeout` is relative: it starts when the request arrives. A request
//! that a node forwards to the leader and that the network holds (a cut link, TCP
//! retransmission) would get a fresh timeout when it finally arrives, and could be
//! proposed long after its client saw it fail. So the node that receives a client's
//! request turns its timeout into an absolute time, milliseconds since the Unix epoch, and
//! a forwarded request carries that time in the [`DEADLINE_HEADER`] metadata header. No
//! node forwards, proposes or starts a read for a request whose deadline has passed by its
//! own clock (docs/API.md, "Deadlines"; the nodes' clocks must be synchronized, NTP).
//!
//! Pure: the clock is a parameter, so every rule here is tested without a server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::metadata::MetadataMap;
use tonic::Status;

/// Metadata header of a forwarded request: its client's deadline, whole milliseconds since
/// the Unix epoch (UTC, wall clock), as ASCII digits.
pub const DEADLINE_HEADER: &str = "kho-deadline-unix-ms";

/// The gRPC timeout header (gRPC over HTTP/2: 1 to 8 digits and a unit, `H M S m u n`).
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Most digits of a `grpc-timeout` value (the gRPC specification's limit).
const GRPC_TIMEOUT_DIGITS_MAX: usize = 8;

/// A wait that ends at the deadline ends this much earlier, milliseconds, when the time
/// left allows it (more than twice this), so that the node's own answer, with its message,
/// reaches the client before the client's timer fires.
pub const DEADLINE_REPLY_MARGIN_MS: u64 = 50;

/// An absolute deadline, milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    unix_ms: u64,
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Deadline {
    pub fn from_unix_ms(unix_ms: u64) -> Deadline {
        Deadline { unix_ms }
    }

    pub fn unix_ms(self) -> u64 {
        self.unix_ms
    }

    /// `timeout` after `now`.
    pub fn after(now: SystemTime, timeout: Duration) -> Deadline {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Deadline { unix_ms: unix_ms(now).saturating_add(ms) }
    }

    /// The time left at `now`; `None` once the deadline has passed (a deadline equal to
    /// `now` has passed: nothing can be done in no time).
    pub fn remaining(self, now: SystemTime) -> Option<Duration> {
        let now_ms = unix_ms(now);
        (self.unix_ms > now_ms).then(|| Duration::from_millis(self.unix_ms - now_ms))
    }

    /// The deadline of a request as it arrived: the earliest of its [`DEADLINE_HEADER`]
    /// (set by a forwarding node, or by a client) and `now` + its `grpc-timeout`; without
    /// either, `now` + `default`. A malformed header is INVALID_ARGUMENT naming it.
    pub fn of_request(metadata: &MetadataMap, now: SystemTime, default: Duration) -> Result<Deadline, Status> {
        let text = |name: &str| -> Result<Option<String>, Status> {
            match metadata.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.to_string()))
                    .map_err(|_| Status::invalid_argument(format!("{name}: the header is not ASCII text"))),
            }
        };
        let absolute = match text(DEADLINE_HEADER)? {
            None => None,
            Some(s) => Some(parse_unix_ms(&s).map_err(|why| Status::invalid_argument(format!("{DEADLINE_HEADER}: `{s}` {why}")))?),
        };
        let relative = match text(GRPC_TIMEOUT_HEADER)? {
            None => None,
            Some(s) => Some(Deadline::after(
                now,
                parse_grpc_timeout(&s).map_err(|why| Status::invalid_argument(format!("{GRPC_TIMEOUT_HEADER}: `{s}` {why}")))?,
            )),
        };
        Ok(match (absolute, relative) {
            (Some(a), Some(r)) => a.min(r),
            (Some(a), None) => a,
            (None, Some(r)) => r,
            (None, None) => Deadline::after(now, default),
        })
    }
}

/// How long a wait that must end by the deadline may take, given the time left: the time
/// left less [`DEADLINE_REPLY_MARGIN_MS`] when it is more than twice the margin, else all of it.
pub fn wait_budget(remaining: Duration) -> Duration {
    let margin = Duration::from_millis(DEADLINE_REPLY_MARGIN_MS);
    if remaining > margin * 2 {
        remaining - margin
    } else {
        remaining
    }
}

fn parse_unix_ms(s: &str) -> Result<Deadline, &'static str> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a whole number of milliseconds since the Unix epoch");
    }
    s.parse::<u64>().map(Deadline::from_unix_ms).map_err(|_| "is not a whole number of milliseconds since the Unix epoch")
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H` hours, `M` minutes,
/// `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds).
pub fn parse_grpc_timeout(s: &str) -> Result<Duration, &'static str> {
    const FORMAT: &str = "is not a gRPC timeout (1 to 8 digits and a unit: H, M, S, m, u or n)";
    let Some(unit) = s.chars().last() else {
        return Err(FORMAT);
    };
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > GRPC_TIMEOUT_DIGITS_MAX || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FORMAT);
    }
    let n: u64 = digits.parse().map_err(|_| FORMAT)?;
    Ok(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return Err(FORMAT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    const DEFAULT: Duration = Duration::from_secs(6);

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("999m"), Ok(Duration::from_millis(999)));
        assert_eq!(parse_grpc_timeout("1500u"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_grpc_timeout("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_grpc_timeout("0m"), Ok(Duration::ZERO));
        for bad in ["", "m", "10", "10x", "123456789m", "-1S", "1.5S", " 1S", "1SS", "１S"] {
            assert!(parse_grpc_timeout(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_request_without_a_deadline_gets_the_default() {
        let d = Deadline::of_request(&MetadataMap::new(), at(1_000), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 7_000);
    }

    #[test]
    fn the_clients_relative_timeout_becomes_absolute() {
        let d = Deadline::of_request(&metadata(&[("grpc-timeout", "1500m")]), at(10_000), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 11_500);
        // A timeout longer than the default is the client's to choose.
        let d = Deadline::of_request(&metadata(&[("grpc-timeout", "60S")]), at(10_000), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 70_000);
    }

    #[test]
    fn a_late_forwarded_request_keeps_its_absolute_deadline() {
        // Forwarded at 10 s with 1 s left; held by the network and arriving at 30 s, its
        // grpc-timeout would restart: the absolute header wins.
        let md = metadata(&[(DEADLINE_HEADER, "11000"), ("grpc-timeout", "1000m")]);
        let d = Deadline::of_request(&md, at(30_000), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 11_000);
        assert_eq!(d.remaining(at(30_000)), None);
        // On time, the earlier of the two counts.
        let d = Deadline::of_request(&md, at(9_500), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 10_500);
        let d = Deadline::of_request(&metadata(&[(DEADLINE_HEADER, "11000")]), at(9_500), DEFAULT).unwrap();
        assert_eq!(d.unix_ms(), 11_000);
    }

    #[test]
    fn malformed_headers_are_invalid_arguments_naming_the_header() {
        for bad in ["", "soon", "-5", "1e9", "12.5", "99999999999999999999999"] {
            let e = Deadline::of_request(&metadata(&[(DEADLINE_HEADER, bad)]), at(0), DEFAULT).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("kho-deadline-unix-ms: "), "{}", e.message());
        }
        let e = Deadline::of_request(&metadata(&[("grpc-timeout", "5 seconds")]), at(0), DEFAULT).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("grpc-timeout: "), "{}", e.message());
    }

    #[test]
    fn remaining_time_ends_at_the_deadline() {
        let d = Deadline::from_unix_ms(5_000);
        assert_eq!(d.remaining(at(4_000)), Some(Duration::from_secs(1)));
        assert_eq!(d.remaining(at(4_999)), Some(Duration::from_millis(1)));
        assert_eq!(d.remaining(at(5_000)), None);
        assert_eq!(d.remaining(at(6_000)), None);
        assert_eq!(Deadline::after(at(u64::MAX - 1), Duration::from_secs(10)).unix_ms(), u64::MAX);
    }

    #[test]
    fn waits_leave_a_margin_for_the_answer_when_there_is_time() {
        assert_eq!(wait_budget(Duration::from_secs(1)), Duration::from_millis(1_000 - DEADLINE_REPLY_MARGIN_MS));
        assert_eq!(wait_budget(Duration::from_millis(DEADLINE_REPLY_MARGIN_MS * 2)), Duration::from_millis(DEADLINE_REPLY_MARGIN_MS * 2));
        assert_eq!(wait_budget(Duration::from_millis(10)), Duration::from_millis(10));
    }
}
