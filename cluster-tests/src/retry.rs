//! Bounded retries of gRPC calls.

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

/// How a call is retried. Every field is a bound.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Most attempts of one call, including the first.
    pub attempts_max: u32,
    /// Pause after the first failed attempt, milliseconds; doubled after each further one.
    pub backoff_initial_ms: u64,
    /// Longest pause between attempts, milliseconds.
    pub backoff_max_ms: u64,
    /// Longest one attempt may take, milliseconds; a slower attempt counts as failed with
    /// DEADLINE_EXCEEDED (its outcome is unknown).
    pub call_timeout_ms: u64,
}

impl RetryPolicy {
    /// For calls that must succeed while the cluster is healthy (elections may still happen).
    pub const STEADY: RetryPolicy = RetryPolicy { attempts_max: 30, backoff_initial_ms: 50, backoff_max_ms: 500, call_timeout_ms: 5_000 };

    /// For calls that must ride out a node restart or a whole-cluster restart (tens of seconds).
    pub const THROUGH_OUTAGE: RetryPolicy =
        RetryPolicy { attempts_max: 80, backoff_initial_ms: 50, backoff_max_ms: 500, call_timeout_ms: 3_000 };

    /// The pause after failed attempt number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.min(16);
        Duration::from_millis(self.backoff_initial_ms.saturating_mul(factor).min(self.backoff_max_ms))
    }

    /// The longest a whole retried call can take, milliseconds (for choosing test bounds).
    pub fn worst_case_ms(&self) -> u64 {
        (0..self.attempts_max).map(|a| self.call_timeout_ms + self.backoff(a).as_millis() as u64).sum()
    }
}

/// Whether a failed call may succeed when repeated: no quorum, an election, a node that is
/// down or restarting, a broken connection, or a timeout. A write that failed this way has an
/// unknown outcome: it may or may not have been applied.
pub fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted)
}

/// Calls `call(attempt)` until it succeeds, fails with a status that is not retryable, or
/// `policy.attempts_max` attempts have failed; returns the last result. Each attempt is
/// bounded by `policy.call_timeout_ms`.
pub async fn retry_call<T, F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<T, Status>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    assert!(policy.attempts_max > 0, "RetryPolicy.attempts_max must be > 0");
    let call_timeout = Duration::from_millis(policy.call_timeout_ms);
    let mut last = None;
    for attempt in 0..policy.attempts_max {
        let result = match tokio::time::timeout(call_timeout, call(attempt)).await {
            Ok(result) => result,
            Err(_) => {
                Err(Status::deadline_exceeded(format!("cluster-tests: attempt {attempt} took longer than {} ms", policy.call_timeout_ms)))
            }
        };
        match result {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if is_retryable(&status) => last = Some(status),
            Err(status) => return Err(status),
        }
        if attempt + 1 < policy.attempts_max {
            tokio::time::sleep(policy.backoff(attempt)).await;
        }
    }
    Err(last.expect("at least one attempt"))
}

/// One RPC with [`RetryPolicy::STEADY`] retries on retryable errors (elections, reconnects):
/// `rpc!(client, method, request)`.
#[macro_export]
macro_rules! rpc {
    ($client:expr, $method:ident, $req:expr) => {{
        let client = $client.clone();
        let req = $req;
        $crate::retry_call(&$crate::RetryPolicy::STEADY, move |_| {
            let mut client = client.clone();
            let req = req.clone();
            async move { client.$method(req).await }
        })
        .await
    }};
}

/// Fails the test (with the cluster's log tails) unless `result` is an error with `code`
/// whose message mentions every one of `mentions` (case-insensitive).
pub fn expect_status<T: std::fmt::Debug>(
    cluster: &crate::Cluster,
    what: &str,
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    mentions: &[&str],
) {
    match result {
        Ok(v) => cluster.fail(format!("{what}: expected {code:?}, got OK: {v:?}")),
        Err(status) => {
            let message = status.message().to_lowercase();
            let missing: Vec<&&str> = mentions.iter().filter(|m| !message.contains(&m.to_lowercase())).collect();
            if status.code() != code || !missing.is_empty() {
                cluster.fail(format!("{what}: expected {code:?} mentioning {mentions:?}, got {:?} `{}`", status.code(), status.message()));
            }
        }
    }
}

/// The value of a successful call, or the test fails (with the cluster's log tails).
pub fn ok<T>(cluster: &crate::Cluster, what: &str, result: Result<T, tonic::Status>) -> T {
    result.unwrap_or_else(|e| cluster.fail(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy { attempts_max: 5, backoff_initial_ms: 10, backoff_max_ms: 35, call_timeout_ms: 100 };
        assert_eq!(p.backoff(0), Duration::from_millis(10));
        assert_eq!(p.backoff(1), Duration::from_millis(20));
        assert_eq!(p.backoff(2), Duration::from_millis(35));
        assert_eq!(p.backoff(60), Duration::from_millis(35));
        assert_eq!(p.worst_case_ms(), 500 + 10 + 20 + 35 + 35 + 35);
    }

    #[tokio::test]
    async fn retries_only_retryable_codes() {
        let p = RetryPolicy { attempts_max: 3, backoff_initial_ms: 1, backoff_max_ms: 1, call_timeout_ms: 1_000 };
        let mut calls = 0;
        let r: Result<(), Status> = retry_call(&p, |_| {
            calls += 1;
            async { Err(Status::unavailable("no leader")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<(), Status> = retry_call(&p, |_| {
            calls += 1;
            async { Err(Status::invalid_argument("key is empty")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(calls, 1);

        let r = retry_call(&p, |attempt| async move {
            if attempt < 2 {
                Err(Status::unavailable("election"))
            } else {
                Ok(tonic::Response::new(attempt))
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
    }
}
