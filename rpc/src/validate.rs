//! Checks of client input against the configured limits, before anything reaches Raft.
//! Every error is INVALID_ARGUMENT and names the field and the limit.

use tonic::Status;

use crate::config::Limits;

pub fn name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    kho_raft::catalog::check_name(field, v).map_err(crate::status::app_error)
}

/// A family name may be empty (the table's first family).
pub fn family(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        name(field, v)
    }
}

pub fn key(limits: &Limits, field: &str, k: &[u8]) -> Result<(), Status> {
    if k.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    if k.len() as u64 > limits.key_bytes_max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes exceeds the limit of {} bytes (limits.key_bytes_max)",
            k.len(),
            limits.key_bytes_max
        )));
    }
    Ok(())
}

/// A bound or prefix may be empty, but not over the key limit.
pub fn optional_key(limits: &Limits, field: &str, k: &[u8]) -> Result<(), Status> {
    if k.is_empty() {
        Ok(())
    } else {
        key(limits, field, k)
    }
}

pub fn qualifier(limits: &Limits, field: &str, q: &[u8]) -> Result<(), Status> {
    if q.len() as u64 > limits.qualifier_bytes_max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes exceeds the limit of {} bytes (limits.qualifier_bytes_max)",
            q.len(),
            limits.qualifier_bytes_max
        )));
    }
    Ok(())
}

pub fn value(limits: &Limits, field: &str, v: &[u8]) -> Result<(), Status> {
    if v.len() as u64 > limits.value_bytes_max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes exceeds the limit of {} bytes (limits.value_bytes_max)",
            v.len(),
            limits.value_bytes_max
        )));
    }
    Ok(())
}

pub fn batch(limits: &Limits, field: &str, ops: usize, bytes: u64) -> Result<(), Status> {
    if ops == 0 {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    if ops as u64 > limits.batch_ops_max {
        return Err(Status::invalid_argument(format!(
            "{field}: {ops} operations exceed the limit of {} (limits.batch_ops_max)",
            limits.batch_ops_max
        )));
    }
    if bytes > limits.batch_bytes_max {
        return Err(Status::invalid_argument(format!(
            "{field}: {bytes} bytes of keys and values exceed the limit of {} bytes (limits.batch_bytes_max)",
            limits.batch_bytes_max
        )));
    }
    Ok(())
}

/// The effective scan limit: 0 means the server maximum; more than it is an error.
pub fn scan_limit(limits: &Limits, requested: u32) -> Result<usize, Status> {
    if requested == 0 {
        return Ok(limits.scan_limit_max as usize);
    }
    if requested as u64 > limits.scan_limit_max {
        return Err(Status::invalid_argument(format!(
            "limit: {requested} exceeds the limit of {} (limits.scan_limit_max)",
            limits.scan_limit_max
        )));
    }
    Ok(requested as usize)
}
