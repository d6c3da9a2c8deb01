//! `kho kv` and `kho row`: the Data service from the command line.
//!
//! Keys, rows, qualifiers and values given on the command line are their UTF-8 bytes;
//! printed bytes are UTF-8 text when valid, else `0x<hex>` (see `display::bytes`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kho_proto::v1::{
    mutation, DeleteCell, DeleteFamily, DeleteRequest, DeleteRow, GetRequest, MutateRowRequest, Mutation, PutRequest, ReadConsistency,
    ReadRowRequest, ScanRequest, ScanRowsRequest, SetCell,
};

use crate::admin_cmd::ConnArgs;
use crate::client::{self, Timeouts};
use crate::display;
use crate::parse::{parse_cell, parse_set, CellSpec, SetSpec};

/// The table a data command works on.
#[derive(Debug, Clone, Args)]
pub struct TableRef {
    /// Tenant (hosted database).
    #[arg(long)]
    pub tenant: String,
    /// Table of the tenant.
    #[arg(long)]
    pub table: String,
}

/// Bounds of a scan, shared by `kv scan` and `row scan`.
#[derive(Debug, Clone, Args)]
pub struct ScanBounds {
    /// Inclusive start; default: the first key of the table.
    #[arg(long)]
    pub start: Option<String>,
    /// Exclusive end; default: no end.
    #[arg(long)]
    pub end: Option<String>,
    /// Only keys that start with this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Most results; default (0): the server's limits.scan_limit_max.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct KvCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Debug, Subcommand)]
pub enum KvOp {
    /// Sets KEY to VALUE.
    Put {
        #[command(flatten)]
        t: TableRef,
        key: String,
        value: String,
        /// Column family; default: the table's first family.
        #[arg(long, default_value = "")]
        family: String,
    },
    /// Prints the value of KEY; exits 1 with "not found" when there is none.
    Get {
        #[command(flatten)]
        t: TableRef,
        key: String,
        #[arg(long, default_value = "")]
        family: String,
        /// Serve from the called node's local replica without asking the leader: may be
        /// stale, answers without a quorum (READ_CONSISTENCY_STALE).
        #[arg(long)]
        stale: bool,
    },
    /// Deletes KEY.
    Delete {
        #[command(flatten)]
        t: TableRef,
        key: String,
        #[arg(long, default_value = "")]
        family: String,
    },
    /// Prints `key<TAB>value` per pair of a key range, in key order.
    Scan {
        #[command(flatten)]
        t: TableRef,
        #[command(flatten)]
        bounds: ScanBounds,
        #[arg(long, default_value = "")]
        family: String,
        /// Serve from the called node's local replica without asking the leader: may be
        /// stale, answers without a quorum (READ_CONSISTENCY_STALE).
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Debug, Args)]
pub struct RowCmd {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub op: RowOp,
}

#[derive(Debug, Subcommand)]
pub enum RowOp {
    /// Sets and deletes cells of one row atomically. Applied in this order: --delete-row,
    /// --delete-family, --delete, then --set (each in the order given), so
    /// `--delete-row --set ...` replaces the row.
    Mutate {
        #[command(flatten)]
        t: TableRef,
        /// Row key.
        #[arg(long)]
        row: String,
        /// A cell to set, `family:qualifier=value` (repeatable).
        #[arg(long = "set", value_name = "FAMILY:QUALIFIER=VALUE", value_parser = parse_set)]
        sets: Vec<SetSpec>,
        /// A cell to delete, `family:qualifier` (repeatable).
        #[arg(long = "delete", value_name = "FAMILY:QUALIFIER", value_parser = parse_cell)]
        deletes: Vec<CellSpec>,
        /// Every cell of a family to delete (repeatable).
        #[arg(long = "delete-family", value_name = "FAMILY")]
        delete_families: Vec<String>,
        /// Delete the whole row first.
        #[arg(long)]
        delete_row: bool,
    },
    /// Prints one row: the row key, then `  family:qualifier = value` per cell.
    Read {
        #[command(flatten)]
        t: TableRef,
        /// Row key.
        #[arg(long)]
        row: String,
        /// Only these families (repeatable, or comma-separated).
        #[arg(long = "family", value_delimiter = ',')]
        families: Vec<String>,
        /// Serve from the called node's local replica without asking the leader: may be
        /// stale, answers without a quorum (READ_CONSISTENCY_STALE).
        #[arg(long)]
        stale: bool,
    },
    /// Prints whole rows of a row-key range, in row-key order.
    Scan {
        #[command(flatten)]
        t: TableRef,
        #[command(flatten)]
        bounds: ScanBounds,
        /// Only these families (repeatable, or comma-separated).
        #[arg(long = "family", value_delimiter = ',')]
        families: Vec<String>,
        /// Serve from the called node's local replica without asking the leader: may be
        /// stale, answers without a quorum (READ_CONSISTENCY_STALE).
        #[arg(long)]
        stale: bool,
    },
}

/// The mutations of `row mutate`, in the documented order. Pure, for tests.
pub fn mutations(delete_row: bool, delete_families: &[String], deletes: &[CellSpec], sets: &[SetSpec]) -> Vec<Mutation> {
    let m = |x| Mutation { mutation: Some(x) };
    let mut out = Vec::new();
    if delete_row {
        out.push(m(mutation::Mutation::DeleteRow(DeleteRow {})));
    }
    for f in delete_families {
        out.push(m(mutation::Mutation::DeleteFamily(DeleteFamily { family: f.clone() })));
    }
    for d in deletes {
        out.push(m(mutation::Mutation::DeleteCell(DeleteCell { family: d.family.clone(), qualifier: d.qualifier.clone().into_bytes() })));
    }
    for s in sets {
        out.push(m(mutation::Mutation::SetCell(SetCell {
            family: s.family.clone(),
            qualifier: s.qualifier.clone().into_bytes(),
            value: s.value.clone().into_bytes(),
        })));
    }
    out
}

/// The read consistency of a `--stale` flag.
fn consistency(stale: bool) -> i32 {
    let c = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
    c as i32
}

fn opt_bytes(s: Option<String>) -> Vec<u8> {
    s.map(String::into_bytes).unwrap_or_default()
}

pub async fn kv(cmd: KvCmd) -> anyhow::Result<ExitCode> {
    let mut data = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.data();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        KvOp::Put { t, key, value, family } => {
            let req = PutRequest { tenant: t.tenant, table: t.table, key: key.into_bytes(), value: value.into_bytes(), family };
            let r = data.put(req).await?.into_inner();
            writeln!(out, "OK (revision {})", r.header.map(|h| h.revision).unwrap_or_default())?;
        }
        KvOp::Get { t, key, family, stale } => {
            let req = GetRequest { tenant: t.tenant, table: t.table, key: key.into_bytes(), family, consistency: consistency(stale) };
            let r = data.get(req).await?.into_inner();
            if !r.found {
                eprintln!("not found");
                return Ok(ExitCode::from(1));
            }
            writeln!(out, "{}", display::bytes(&r.value))?;
        }
        KvOp::Delete { t, key, family } => {
            let req = DeleteRequest { tenant: t.tenant, table: t.table, key: key.into_bytes(), family };
            let r = data.delete(req).await?.into_inner();
            let rev = r.header.map(|h| h.revision).unwrap_or_default();
            if r.existed {
                writeln!(out, "deleted (revision {rev})")?;
            } else {
                writeln!(out, "did not exist (revision {rev})")?;
            }
        }
        KvOp::Scan { t, bounds, family, stale } => {
            let req = ScanRequest {
                tenant: t.tenant,
                table: t.table,
                family,
                start_key: opt_bytes(bounds.start),
                end_key: opt_bytes(bounds.end),
                prefix: opt_bytes(bounds.prefix),
                limit: bounds.limit,
                consistency: consistency(stale),
            };
            let mut stream = data.scan(req).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                for kv in chunk.kvs {
                    writeln!(out, "{}\t{}", display::bytes(&kv.key), display::bytes(&kv.value))?;
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn row(cmd: RowCmd) -> anyhow::Result<ExitCode> {
    let mut data = client::connect(&cmd.conn.target()?, Timeouts::default()).await?.data();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    match cmd.op {
        RowOp::Mutate { t, row, sets, deletes, delete_families, delete_row } => {
            let mutations = mutations(delete_row, &delete_families, &deletes, &sets);
            if mutations.is_empty() {
                anyhow::bail!("nothing to do: give --set, --delete, --delete-family or --delete-row");
            }
            let req = MutateRowRequest { tenant: t.tenant, table: t.table, row_key: row.into_bytes(), mutations };
            let r = data.mutate_row(req).await?.into_inner();
            writeln!(out, "OK (revision {})", r.header.map(|h| h.revision).unwrap_or_default())?;
        }
        RowOp::Read { t, row, families, stale } => {
            let req = ReadRowRequest {
                tenant: t.tenant,
                table: t.table,
                row_key: row.into_bytes(),
                families: non_empty(families),
                qualifiers: vec![],
                consistency: consistency(stale),
            };
            let r = data.read_row(req).await?.into_inner();
            match r.row {
                Some(row) if r.found => write!(out, "{}", display::row(&row))?,
                _ => {
                    eprintln!("not found");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        RowOp::Scan { t, bounds, families, stale } => {
            let req = ScanRowsRequest {
                tenant: t.tenant,
                table: t.table,
                start_row: opt_bytes(bounds.start),
                end_row: opt_bytes(bounds.end),
                prefix: opt_bytes(bounds.prefix),
                families: non_empty(families),
                limit: bounds.limit,
                consistency: consistency(stale),
            };
            let mut stream = data.scan_rows(req).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                for row in chunk.rows {
                    write!(out, "{}", display::row(&row))?;
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn non_empty(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_order_is_delete_row_families_cells_sets() {
        let sets = vec![parse_set("identity:ho_ten=Võ Thị Mai").unwrap()];
        let deletes = vec![parse_cell("residence:dia_chi").unwrap()];
        let ms = mutations(true, &["residence".to_string()], &deletes, &sets);
        let kinds: Vec<&str> = ms
            .iter()
            .map(|m| match &m.mutation {
                Some(mutation::Mutation::DeleteRow(_)) => "row",
                Some(mutation::Mutation::DeleteFamily(_)) => "family",
                Some(mutation::Mutation::DeleteCell(_)) => "cell",
                Some(mutation::Mutation::SetCell(_)) => "set",
                None => "none",
            })
            .collect();
        assert_eq!(kinds, ["row", "family", "cell", "set"]);
        match &ms[3].mutation {
            Some(mutation::Mutation::SetCell(s)) => {
                assert_eq!(s.family, "identity");
                assert_eq!(s.qualifier, b"ho_ten");
                assert_eq!(s.value, "Võ Thị Mai".as_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert!(mutations(false, &[], &[], &[]).is_empty());
    }
}
