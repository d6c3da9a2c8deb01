//! How the CLI prints bytes, rows, status codes and the cluster table. Pure functions.

use std::fmt::Write as _;

use kho_proto::v1::{ClusterStatusResponse, Row, TenantKeyStatusResponse};

/// Bytes as UTF-8 text when they are valid UTF-8, otherwise `0x` and lowercase hex.
pub fn bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(2 + 2 * b.len());
            out.push_str("0x");
            for byte in b {
                // Writing to a String cannot fail.
                let _ = write!(out, "{byte:02x}");
            }
            out
        }
    }
}

/// The canonical gRPC name of a status code (`NOT_FOUND`), as in the gRPC spec and in
/// every other language's tooling; tonic's `Display` prints a sentence instead.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `error: <CODE>: <message>`, the one line the CLI prints for a gRPC error.
pub fn status_line(status: &tonic::Status) -> String {
    format!("error: {}: {}", code_name(status.code()), status.message())
}

/// A row as the CLI prints it: the row key, then `  family:qualifier = value` per cell.
pub fn row(r: &Row) -> String {
    let mut out = bytes(&r.key);
    out.push('\n');
    for c in &r.cells {
        let _ = writeln!(out, "  {}:{} = {}", c.family, bytes(&c.qualifier), bytes(&c.value));
    }
    if r.cells_withheld {
        out.push_str("  (cells withheld: your grants do not cover every cell of this row)\n");
    }
    out
}

/// Lays out rows of cells in left-aligned columns separated by two spaces; the first row
/// is the header. Trailing blanks are trimmed.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width_count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; width_count];
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            line.push_str(cell);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `kho cluster status` table: one line per member with its meta group Raft state (the
/// meta group's leader marked with `*`) and the data shards it holds and leads, and the
/// error of every member that did not answer below the table.
pub fn cluster_status(s: &ClusterStatusResponse) -> String {
    let mut out = String::new();
    match s.leader_id {
        0 => {
            let _ = writeln!(out, "leader: none known  term: {}", s.term);
        }
        id => {
            let _ = writeln!(out, "leader: {id}  term: {}", s.term);
        }
    }
    let mut nodes: Vec<_> = s.nodes.iter().collect();
    nodes.sort_by_key(|n| n.node_id);
    let mut table =
        vec![["", "NODE", "ADDRESS", "PEER ADDRESS", "ROLE", "TERM", "LAST LOG", "COMMIT", "APPLIED", "SHARDS", "LEADS", "ASLEEP"]
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()];
    for n in &nodes {
        let is_leader = (s.leader_id != 0 && n.node_id == s.leader_id) || n.role == "leader";
        let unreachable = n.role == "unreachable";
        let num = |v: u64| if unreachable { "-".to_string() } else { v.to_string() };
        table.push(vec![
            if is_leader { "*".into() } else { String::new() },
            n.node_id.to_string(),
            if n.client_address.is_empty() { "-".to_string() } else { n.client_address.clone() },
            n.address.clone(),
            n.role.clone(),
            num(n.term),
            num(n.last_log_index),
            num(n.commit_index),
            num(n.applied_index),
            num(n.shards.len() as u64),
            num(n.shards.iter().filter(|s| s.role == "leader").count() as u64),
            num(n.shards.iter().filter(|s| s.asleep).count() as u64),
        ]);
    }
    out.push_str(&columns(&table));
    for n in &nodes {
        if !n.error.is_empty() {
            let _ = writeln!(out, "node {}: {}", n.node_id, n.error);
        }
    }
    out
}

/// The `kho shard list` table: one line per shard in key order.
pub fn shard_list(shards: &[kho_proto::v1::ShardInfo]) -> String {
    if shards.is_empty() {
        return "no shards\n".to_string();
    }
    let mut table = vec![["ID", "TENANT", "START", "END", "REPLICAS", "LEADER", "TERM", "EPOCH", "KEYS~", "BYTES~"]
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()];
    for s in shards {
        let mut replicas: Vec<String> = s.voters.iter().map(|n| n.to_string()).collect();
        replicas.extend(s.learners.iter().map(|n| format!("{n}(learner)")));
        table.push(vec![
            s.id.to_string(),
            s.tenant.clone(),
            s.start.clone(),
            s.end.clone(),
            replicas.join(","),
            if s.leader_id == 0 { "-".to_string() } else { s.leader_id.to_string() },
            s.term.to_string(),
            format!("{}/{}", s.epoch_conf_ver, s.epoch_version),
            s.approximate_keys.to_string(),
            s.approximate_bytes.to_string(),
        ]);
    }
    columns(&table)
}

/// The `kho keys status` text: per tenant, a line with whether it is encrypted and its
/// current key version, a table of its key versions (state, values sealed, the revision
/// that created it), its plaintext values and its re-encryption progress.
pub fn tenant_keys(s: &TenantKeyStatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "counted at applied index {}", s.applied_index);
    if s.tenants.is_empty() {
        out.push_str("no tenants\n");
    }
    for t in &s.tenants {
        out.push('\n');
        if t.encrypted {
            let _ = writeln!(out, "tenant {}: encrypted, current key version {}", t.tenant, t.current_version);
        } else {
            let _ = writeln!(out, "tenant {}: not encrypted", t.tenant);
        }
        if !t.versions.is_empty() {
            let mut table = vec![["VERSION", "STATE", "VALUES", "CREATED AT REVISION"].iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            let mut versions: Vec<_> = t.versions.iter().collect();
            versions.sort_by_key(|v| v.version);
            for v in versions {
                table.push(vec![v.version.to_string(), v.state.clone(), v.values.to_string(), v.created_revision.to_string()]);
            }
            for line in columns(&table).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        let _ = writeln!(out, "  plaintext values: {}", t.plaintext_values);
        match &t.reencryption {
            None => out.push_str("  re-encryption: never started\n"),
            Some(j) => {
                let state = if j.done { "done" } else { "running" };
                let _ = writeln!(
                    out,
                    "  re-encryption to version {}: visited {}, rewritten {}, {state}",
                    j.target_version, j.visited, j.rewritten
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kho_proto::v1::{Cell, KeyVersionStatus, NodeStatus, ReencryptionStatus, TenantKeys};

    #[test]
    fn bytes_print_as_text_or_hex() {
        assert_eq!(bytes("Đà Nẵng".as_bytes()), "Đà Nẵng");
        assert_eq!(bytes(b""), "");
        assert_eq!(bytes(&[0xff, 0x00, 0x1a]), "0xff001a");
    }

    #[test]
    fn status_line_uses_canonical_names() {
        let s = tonic::Status::not_found("table dan_cu/citizen");
        assert_eq!(status_line(&s), "error: NOT_FOUND: table dan_cu/citizen");
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }

    #[test]
    fn row_format() {
        let r = Row {
            key: b"001085012345".to_vec(),
            cells: vec![
                Cell { family: "identity".into(), qualifier: b"ho_ten".to_vec(), value: "Lê Thị Lan".into() },
                Cell { family: "identity".into(), qualifier: vec![], value: vec![0xfe] },
            ],
            cells_withheld: false,
        };
        assert_eq!(row(&r), "001085012345\n  identity:ho_ten = Lê Thị Lan\n  identity: = 0xfe\n");
    }

    #[test]
    fn status_table_marks_leader_and_lists_errors() {
        let node = |id: u64, role: &str| NodeStatus {
            node_id: id,
            address: format!("127.0.0.1:710{id}"),
            client_address: if role == "unreachable" { String::new() } else { format!("127.0.0.1:700{id}") },
            role: role.into(),
            term: 3,
            leader_id: 1,
            last_log_index: 120,
            commit_index: 120,
            applied_index: 119,
            error: if role == "unreachable" { "connection refused".into() } else { String::new() },
            ..Default::default()
        };
        let s =
            ClusterStatusResponse { leader_id: 1, term: 3, nodes: vec![node(2, "follower"), node(1, "leader"), node(3, "unreachable")] };
        let text = cluster_status(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: 1  term: 3");
        assert!(lines[1].starts_with("   NODE  ADDRESS"), "{text}");
        assert!(lines[2].starts_with("*  1     127.0.0.1:7001  127.0.0.1:7101  leader"), "{text}");
        assert!(lines[3].starts_with("   2 "), "{text}");
        assert!(lines[3].contains(" 119 ") && lines[3].ends_with('0'), "{text}");
        assert!(lines[4].contains("unreachable") && lines[4].ends_with('-'), "{text}");
        assert_eq!(lines[5], "node 3: connection refused");
    }

    #[test]
    fn key_status_shows_versions_plaintext_and_progress() {
        let v = |version: u32, state: &str, values: u64, created_revision: u64| KeyVersionStatus {
            version,
            state: state.into(),
            values,
            created_revision,
        };
        let s = TenantKeyStatusResponse {
            applied_index: 812,
            counted: true,
            tenants: vec![
                TenantKeys {
                    tenant: "dan_cu".into(),
                    encrypted: true,
                    current_version: 2,
                    versions: vec![v(2, "current", 880, 700), v(1, "retired", 120, 12)],
                    plaintext_values: 3,
                    reencryption: Some(ReencryptionStatus { target_version: 2, done: false, visited: 400, rewritten: 90 }),
                },
                TenantKeys {
                    tenant: "tham_khao".into(),
                    encrypted: false,
                    current_version: 0,
                    versions: vec![],
                    plaintext_values: 50,
                    reencryption: None,
                },
            ],
        };
        let text = tenant_keys(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "counted at applied index 812", "{text}");
        assert_eq!(lines[2], "tenant dan_cu: encrypted, current key version 2", "{text}");
        assert_eq!(lines[3], "  VERSION  STATE    VALUES  CREATED AT REVISION", "{text}");
        assert_eq!(lines[4], "  1        retired  120     12", "{text}");
        assert_eq!(lines[5], "  2        current  880     700", "{text}");
        assert_eq!(lines[6], "  plaintext values: 3", "{text}");
        assert_eq!(lines[7], "  re-encryption to version 2: visited 400, rewritten 90, running", "{text}");
        assert_eq!(lines[9], "tenant tham_khao: not encrypted", "{text}");
        assert_eq!(lines[10], "  plaintext values: 50", "{text}");
        assert_eq!(lines[11], "  re-encryption: never started", "{text}");
        let empty = tenant_keys(&TenantKeyStatusResponse { applied_index: 1, tenants: vec![], counted: true });
        assert_eq!(empty, "counted at applied index 1\nno tenants\n");
    }
}
