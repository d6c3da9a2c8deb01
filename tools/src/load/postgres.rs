//! `kho load postgres`: rows of a PostgreSQL table or query, read with a binary
//! `COPY (SELECT …) TO STDOUT` (tokio-postgres, streamed: memory stays bounded whatever the
//! table's size), in the order of the mapping's key columns so that a resume (`OFFSET` of
//! the rows already read) continues with the same rows.

use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::Args;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Type};

use super::cmd::{mapping_of, start_job, RunOpts, TargetArgs};
use super::encode::Field;
use super::job::SourceSpec;
use super::mapping::ColType;
use super::source::{Next, Position, SourceRecord};
use crate::admin_cmd::ConnArgs;

/// Rows read ahead of the mapping, count.
const PG_ROWS_AHEAD_MAX: usize = 4_096;
/// Bytes of a row kept as its text for the reject file.
const RAW_BYTES_MAX: usize = 1_024;

#[derive(Debug, Args)]
pub struct PgArgs {
    /// The connection string (`host=/run/postgresql dbname=x user=y`, or
    /// `postgresql://user@host/db`). Its password is not kept with the job: a resume takes
    /// it from PGPASSWORD.
    #[arg(long, env = "KHO_PG_DSN", hide_env_values = true)]
    pub dsn: String,
    /// The table to read (`schema.table`): every column.
    #[arg(long = "table", value_name = "TABLE", conflicts_with = "query", required_unless_present = "query")]
    pub source_table: Option<String>,
    /// A query whose rows to read (its column names are the source's columns).
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// A PostgreSQL identifier list `a.b` quoted: `"a"."b"`.
fn quote_ident(name: &str) -> String {
    name.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// The password of this run's connection string (a resume has none: PGPASSWORD).
static PG_PASSWORD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A value of a `key=value` connection string, quoted when it must be.
fn dsn_value(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| !c.is_whitespace() && c != '\'' && c != '\\') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The connection string without its password (what the job keeps): parsed, and written
/// again as `key=value` pairs of what it names (hosts, ports, user, database, options,
/// application name, connect timeout); anything else is left out.
pub fn redact_dsn(dsn: &str) -> anyhow::Result<String> {
    let c: tokio_postgres::Config = dsn.parse().context("--dsn")?;
    let mut parts = Vec::new();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", dsn_value(&hosts.join(","))));
    }
    if !c.get_ports().is_empty() {
        parts.push(format!("port={}", c.get_ports().iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")));
    }
    for (key, value) in
        [("user", c.get_user()), ("dbname", c.get_dbname()), ("options", c.get_options()), ("application_name", c.get_application_name())]
    {
        if let Some(v) = value {
            parts.push(format!("{key}={}", dsn_value(v)));
        }
    }
    if let Some(t) = c.get_connect_timeout() {
        parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
    }
    Ok(parts.join(" "))
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = dsn.parse().context("--dsn")?;
    if config.get_password().is_none() {
        if let Some(p) = PG_PASSWORD.get() {
            config.password(p.clone());
        } else if let Ok(p) = std::env::var("PGPASSWORD") {
            config.password(p);
        }
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The source's columns and their types.
async fn columns(client: &tokio_postgres::Client, query: &str) -> anyhow::Result<Vec<(String, Type)>> {
    let stmt = client.prepare(&format!("SELECT * FROM ({query}) AS kho_source LIMIT 0")).await.context("reading the source's columns")?;
    Ok(stmt.columns().iter().map(|c| (c.name().to_string(), c.type_().clone())).collect())
}

/// The mapping type a PostgreSQL type proposes (`--infer`); None: not readable as such.
fn col_type(t: &Type) -> Option<ColType> {
    Some(match *t {
        Type::INT2 | Type::INT4 | Type::INT8 => ColType::Integer,
        Type::NUMERIC => ColType::Decimal,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::FLOAT4 | Type::FLOAT8 | Type::TIMESTAMP | Type::UUID => {
            ColType::Text
        }
        Type::TIMESTAMPTZ => ColType::Timestamptz,
        Type::DATE => ColType::Date,
        Type::BYTEA => ColType::Bytes,
        Type::BOOL => ColType::Boolean,
        Type::JSON | Type::JSONB => ColType::Json,
        _ => return None,
    })
}

pub async fn command(conn: ConnArgs, a: PgArgs, opts: RunOpts) -> anyhow::Result<ExitCode> {
    let query = match (&a.source_table, &a.query) {
        (Some(t), None) => format!("SELECT * FROM {}", quote_ident(t)),
        (None, Some(q)) => q.trim().trim_end_matches(';').to_string(),
        _ => anyhow::bail!("kho load postgres needs --table TABLE or --query SQL"),
    };
    let client = connect(&a.dsn).await?;
    let cols = columns(&client, &query).await?;
    let unreadable: Vec<String> = cols.iter().filter(|(_, t)| col_type(t).is_none()).map(|(n, t)| format!("{n} ({t})")).collect();
    if !unreadable.is_empty() {
        anyhow::bail!(
            "columns of types kho load does not read: {}; cast them in --query (for example `SELECT col::text AS col ...`)",
            unreadable.join(", ")
        );
    }
    let typed: Vec<(String, ColType)> = cols.iter().map(|(n, t)| (n.clone(), col_type(t).expect("checked"))).collect();
    let Some(mapping) = mapping_of(&a.target, &typed)? else { return Ok(ExitCode::SUCCESS) };
    let order_by = mapping.key.clone();
    let source = SourceSpec::Postgres { dsn: redact_dsn(&a.dsn)?, query, order_by };
    // The password given now serves this run; a resume reads PGPASSWORD.
    if let Some(p) = a.dsn.parse::<tokio_postgres::Config>().ok().and_then(|c| c.get_password().map(|p| p.to_vec())) {
        let _ = PG_PASSWORD.set(p);
    }
    start_job(conn, source, mapping, &a.target, opts).await
}

/// A PostgreSQL source being read: an async task runs the COPY and sends the rows, turned
/// into fields, through a bounded channel; the reader thread takes them.
pub struct PgSource {
    columns: Vec<String>,
    rx: mpsc::Receiver<anyhow::Result<PgRow>>,
    next_record: u64,
}

/// A row of the COPY: its fields, or why one of them could not be read (a NaN numeric, an
/// infinite date: rejected like a bad CSV record, so a resume goes past it).
enum PgRow {
    Fields(Vec<Field>),
    Bad(String),
}

impl PgSource {
    /// Starts reading the rows of `query` ordered by `order_by`, after the first
    /// `resume.record` rows.
    pub fn open(
        rt: &tokio::runtime::Handle,
        dsn: &str,
        query: &str,
        order_by: &[String],
        resume: Option<&Position>,
    ) -> anyhow::Result<PgSource> {
        let skip = resume.map_or(0, |p| p.record);
        let (dsn, query, order_by) = (dsn.to_string(), query.to_string(), order_by.to_vec());
        let (columns, types) = rt.block_on(async {
            let client = connect(&dsn).await?;
            let cols = columns(&client, &query).await?;
            anyhow::Ok((cols.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), cols.into_iter().map(|(_, t)| t).collect::<Vec<_>>()))
        })?;
        let (tx, rx) = mpsc::channel(PG_ROWS_AHEAD_MAX);
        let names = columns.clone();
        rt.spawn(async move {
            if let Err(e) = copy_rows(&dsn, &query, &order_by, skip, &names, &types, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(PgSource { columns, rx, next_record: skip })
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn next(&mut self) -> anyhow::Result<Next> {
        match self.rx.blocking_recv() {
            None => Ok(Next::End),
            Some(Err(e)) => Err(e),
            Some(Ok(row)) => {
                let pos = Position { line: self.next_record + 1, byte: 0, record: self.next_record };
                self.next_record += 1;
                Ok(match row {
                    PgRow::Fields(fields) => {
                        let raw = raw_text(&self.columns, &fields);
                        Next::Record(SourceRecord { pos, fields, raw })
                    }
                    PgRow::Bad(reason) => Next::Bad { pos, reason, raw: String::new() },
                })
            }
        }
    }

    pub fn position(&self) -> Position {
        Position { line: self.next_record + 1, byte: 0, record: self.next_record }
    }
}

async fn copy_rows(
    dsn: &str,
    query: &str,
    order_by: &[String],
    skip: u64,
    names: &[String],
    types: &[Type],
    tx: &mpsc::Sender<anyhow::Result<PgRow>>,
) -> anyhow::Result<()> {
    let client = connect(dsn).await?;
    let order = order_by.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let sql = format!("COPY (SELECT * FROM ({query}) AS kho_source ORDER BY {order} OFFSET {skip}) TO STDOUT (FORMAT binary)");
    let stream = client.copy_out(sql.as_str()).await.context("COPY from PostgreSQL")?;
    let rows = BinaryCopyOutStream::new(stream, types);
    futures::pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.context("reading a row of the COPY")?;
        let mut fields = Vec::with_capacity(types.len());
        let mut bad = None;
        for (i, t) in types.iter().enumerate() {
            match field(&row, i, t) {
                Ok(f) => fields.push(f),
                Err(e) => {
                    bad = Some(format!("column \"{}\" ({t}): {e:#}", names.get(i).map(String::as_str).unwrap_or("?")));
                    break;
                }
            }
        }
        let item = match bad {
            Some(reason) => PgRow::Bad(reason),
            None => PgRow::Fields(fields),
        };
        if tx.send(Ok(item)).await.is_err() {
            return Ok(()); // the reader stopped
        }
    }
    Ok(())
}

fn field(row: &tokio_postgres::binary_copy::BinaryCopyOutRow, i: usize, t: &Type) -> anyhow::Result<Field> {
    Ok(match *t {
        Type::INT2 => row.try_get::<Option<i16>>(i)?.map_or(Field::Null, |v| Field::Int(v as i64)),
        Type::INT4 => row.try_get::<Option<i32>>(i)?.map_or(Field::Null, |v| Field::Int(v as i64)),
        Type::INT8 => row.try_get::<Option<i64>>(i)?.map_or(Field::Null, Field::Int),
        Type::NUMERIC => row.try_get::<Option<PgNumeric>>(i)?.map_or(Field::Null, |n| Field::Decimal(n.0)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row.try_get::<Option<String>>(i)?.map_or(Field::Null, Field::Text),
        Type::FLOAT4 => row.try_get::<Option<f32>>(i)?.map_or(Field::Null, |v| Field::Text(v.to_string())),
        Type::FLOAT8 => row.try_get::<Option<f64>>(i)?.map_or(Field::Null, |v| Field::Text(v.to_string())),
        Type::TIMESTAMP => row.try_get::<Option<NaiveDateTime>>(i)?.map_or(Field::Null, |v| Field::Text(v.to_string())),
        Type::UUID => row.try_get::<Option<PgUuid>>(i)?.map_or(Field::Null, |v| Field::Text(v.0)),
        Type::TIMESTAMPTZ => row.try_get::<Option<DateTime<Utc>>>(i)?.map_or(Field::Null, Field::Timestamp),
        Type::DATE => row.try_get::<Option<NaiveDate>>(i)?.map_or(Field::Null, Field::Date),
        Type::BYTEA => row.try_get::<Option<Vec<u8>>>(i)?.map_or(Field::Null, Field::Bytes),
        Type::BOOL => row.try_get::<Option<bool>>(i)?.map_or(Field::Null, Field::Bool),
        Type::JSON | Type::JSONB => row.try_get::<Option<PgJson>>(i)?.map_or(Field::Null, |j| Field::Json(j.0)),
        _ => anyhow::bail!("type {t} is not read"),
    })
}

/// A row as text for the reject file: `col=value` pairs, bounded.
fn raw_text(columns: &[String], fields: &[Field]) -> String {
    let mut out = String::new();
    for (c, f) in columns.iter().zip(fields) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let v = match f {
            Field::Null => "NULL".to_string(),
            Field::Raw(b) | Field::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Field::Text(s) | Field::Decimal(s) | Field::Json(s) => s.clone(),
            Field::Int(v) => v.to_string(),
            Field::Bool(v) => v.to_string(),
            Field::Date(d) => d.to_string(),
            Field::Timestamp(t) => t.to_rfc3339(),
        };
        out.push_str(&format!("{c}={v}"));
        if out.len() > RAW_BYTES_MAX {
            let mut cut = RAW_BYTES_MAX;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

/// PostgreSQL's `numeric` as its exact decimal text (binary form: digit count, weight,
/// sign, display scale, then base-10000 digits).
pub struct PgNumeric(pub String);

impl<'a> FromSql<'a> for PgNumeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i * 2..i * 2 + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "numeric: truncated".into())
        };
        let (ndigits, weight, sign, dscale) = (word(0)? as usize, word(1)? as i16, word(2)?, word(3)? as usize);
        match sign {
            0x0000 | 0x4000 => {}
            0xC000 => return Err("numeric: NaN is not a decimal".into()),
            0xD000 | 0xF000 => return Err("numeric: infinity is not a decimal".into()),
            s => return Err(format!("numeric: unknown sign 0x{s:04x}").into()),
        }
        let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Result<_, _>>()?;
        // Integer part: base-10000 digits 0..=weight.
        let mut int = String::new();
        for w in 0..=(weight.max(-1) as i32) {
            let d = digits.get(w as usize).copied().unwrap_or(0);
            if int.is_empty() {
                if d != 0 {
                    int = d.to_string();
                }
            } else {
                int.push_str(&format!("{d:04}"));
            }
        }
        if int.is_empty() {
            int.push('0');
        }
        let mut frac = String::new();
        if dscale > 0 {
            // Fraction digits: base-10000 digits after the weight.
            let mut i = weight as i32 + 1;
            while frac.len() < dscale {
                let d = if i < 0 { 0 } else { digits.get(i as usize).copied().unwrap_or(0) };
                frac.push_str(&format!("{d:04}"));
                i += 1;
            }
            frac.truncate(dscale);
        }
        let neg = sign == 0x4000;
        Ok(PgNumeric(format!("{}{int}{}{frac}", if neg { "-" } else { "" }, if dscale > 0 { "." } else { "" })))
    }

    fn accepts(t: &Type) -> bool {
        *t == Type::NUMERIC
    }
}

/// `json` and `jsonb` as their text (jsonb's binary form is a version byte, 1, and the text).
pub struct PgJson(pub String);

impl<'a> FromSql<'a> for PgJson {
    fn from_sql(t: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *t == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("jsonb: unknown binary version".into()),
            }
        } else {
            raw
        };
        Ok(PgJson(std::str::from_utf8(text)?.to_string()))
    }

    fn accepts(t: &Type) -> bool {
        *t == Type::JSON || *t == Type::JSONB
    }
}

/// `uuid` as its canonical text.
pub struct PgUuid(pub String);

impl<'a> FromSql<'a> for PgUuid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() != 16 {
            return Err("uuid: not 16 bytes".into());
        }
        let h = super::job::hex(raw);
        Ok(PgUuid(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])))
    }

    fn accepts(t: &Type) -> bool {
        *t == Type::UUID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> String {
        let mut raw = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            raw.extend(w.to_be_bytes());
        }
        PgNumeric::from_sql(&Type::NUMERIC, &raw).unwrap().0
    }

    #[test]
    fn numeric_is_its_exact_text() {
        assert_eq!(numeric(0, 0, 0, 0, &[]), "0");
        assert_eq!(numeric(1, 0, 0, 0, &[42]), "42");
        assert_eq!(numeric(2, 1, 0, 0, &[12, 3456]), "123456");
        assert_eq!(numeric(2, 0, 0, 2, &[1, 5000]), "1.50");
        assert_eq!(numeric(2, 0, 0x4000, 4, &[123, 4500]), "-123.4500");
        assert_eq!(numeric(1, -1, 0, 5, &[12]), "0.00120");
        assert_eq!(numeric(1, -2, 0, 8, &[5]), "0.00000005");
        assert_eq!(numeric(1, 2, 0, 0, &[7]), "700000000");
    }

    #[test]
    fn the_password_is_not_kept() {
        for (dsn, want) in [
            ("postgresql://kho:secret@localhost:5432/db", "host=localhost port=5432 user=kho dbname=db"),
            ("host=/tmp user=kho password=secret dbname=x", "host=/tmp user=kho dbname=x"),
            ("host=/tmp user=kho password = secret dbname=x", "host=/tmp user=kho dbname=x"),
            ("host=/tmp user=kho password='a b' dbname=x", "host=/tmp user=kho dbname=x"),
            ("postgresql://h/db?password=x&user=u", "host=h port=5432 user=u dbname=db"),
            ("host=/tmp dbname='my db'", "host=/tmp dbname='my db'"),
        ] {
            let got = redact_dsn(dsn).unwrap();
            assert_eq!(got, want, "{dsn}");
            assert!(!got.contains("secret") && !got.contains("password"), "{got}");
            // What is kept still parses, to the same place.
            let c: tokio_postgres::Config = got.parse().unwrap();
            assert!(c.get_password().is_none());
        }
    }
}
