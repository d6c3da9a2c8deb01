//! `kho load`: the command line of bulk loads (docs/MIGRATION.md, docs/CLI.md).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use kho_proto::v1 as pb;
use kho_raft::load::TableDigest;

use super::job::{self, digest_from_pb, Checkpoint, FileId, SourceSpec, Spec, SPEC_VERSION};
use super::mapping::Mapping;
use super::run::{self, Cluster, InFlight, Progress, ReadMode};
use super::source;
use crate::admin_cmd::ConnArgs;

/// The connection flags of `kho load`: those of every command, but the client
/// certificate's key is `--tls-key` (KHO_KEY), as `--key` names the row key's columns.
#[derive(Debug, Clone, Args)]
pub struct LoadConnArgs {
    /// gRPC endpoints, tried in order until one connects (and again after a failure).
    #[arg(
        long,
        global = true,
        env = "KHO_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_name = "HOST:PORT,...",
        value_parser = crate::parse::parse_endpoints
    )]
    pub endpoints: crate::parse::EndpointList,
    /// CA certificates (PEM) the nodes' certificates chain to; with it the connection is TLS.
    #[arg(id = "tls_ca", long = "ca", global = true, env = "KHO_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(id = "tls_cert", long = "cert", global = true, env = "KHO_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(id = "tls_key", long = "tls-key", global = true, env = "KHO_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token sent with every request.
    #[arg(long, global = true, env = "KHO_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl LoadConnArgs {
    pub fn conn(&self) -> ConnArgs {
        ConnArgs {
            endpoints: self.endpoints.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            token: self.token.clone(),
            session: None,
        }
    }
}

/// Least time between two checkpoints of a job, ms.
pub const CHECKPOINT_INTERVAL_MIN_MS: u64 = 1_000;
/// Most batches written at once (`--concurrency`), count.
pub const LOAD_CONCURRENCY_MAX: usize = 64;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadCmd {
    #[command(flatten)]
    pub conn: LoadConnArgs,
    /// Continues job JOB from its last checkpoint (after a crash of the loader, of a node or
    /// of the source): no row missing, none twice in the digest.
    #[arg(long, value_name = "JOB")]
    pub resume: Option<String>,
    /// With --resume: a new reject limit (the job's is kept otherwise).
    #[arg(long, requires = "resume", value_name = "N")]
    pub resume_max_rejects: Option<u64>,
    #[command(flatten)]
    pub run: RunOpts,
    #[command(subcommand)]
    pub op: Option<LoadOp>,
}

#[derive(Debug, Subcommand)]
pub enum LoadOp {
    /// Loads CSV files (a header names the columns unless --no-header; quotes, embedded
    /// newlines and a UTF-8 BOM are read as they are; `.gz` and `.zst` are decompressed).
    Csv(CsvArgs),
    /// Loads JSON Lines files (one object per line; `.gz` and `.zst` are decompressed).
    Jsonl(JsonlArgs),
    /// Loads a PostgreSQL table or query (binary COPY, streamed).
    Postgres(super::postgres::PgArgs),
    /// Lists the load jobs, or shows one.
    Status {
        /// One job, in full.
        job: Option<String>,
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Verifies a job again: the digest of the rows it loaded against the table's digest
    /// computed by the nodes now; with --from-source, reads the source again first.
    Verify {
        job: String,
        /// Recompute the source's digest from the source (else the job's recorded digest).
        #[arg(long)]
        from_source: bool,
    },
    /// Forgets a job (its record; the rows it loaded stay).
    Forget { job: String },
}

/// Options shared by every source.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The target table: TENANT/TABLE. It must exist, with the mapping's families.
    #[arg(long, value_name = "TENANT/TABLE")]
    pub into: String,
    /// The mapping file (TOML, docs/MIGRATION.md); else --key and --family.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "family"])]
    pub mapping: Option<PathBuf>,
    /// The row key's columns, in order (with --family: every other column as text in a
    /// qualifier of its own name).
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    pub key: Vec<String>,
    /// The family of every other column (with --key).
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// Prints a proposed mapping (types from the source) and exits; needs --key and --family.
    #[arg(long)]
    pub infer: bool,
    /// Reads and maps every record and writes the reject file, but loads nothing and
    /// creates no job.
    #[arg(long)]
    pub dry_run: bool,
    /// The job's id (1 to 64 bytes of a-z, 0-9, - and _); default: TABLE-YYYYMMDD-HHMMSS.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Where rejected records go, one JSON line each; default: JOB.rejects.jsonl beside
    /// the first source file.
    #[arg(long, value_name = "PATH")]
    pub reject_file: Option<PathBuf>,
    /// Most records rejected before the job stops; 0: the first bad record stops it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_rejects: u64,
    /// Rows per batch.
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub batch_rows: usize,
    /// Load into a table that already holds rows (verification then compares the whole
    /// table, and fails unless the rows it held are the source's too).
    #[arg(long)]
    pub allow_nonempty: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunOpts {
    /// Progress on stderr: a bar on a terminal, else a JSON line per interval.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Seconds between two progress lines (and two checkpoints at most).
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECONDS")]
    pub progress_secs: f64,
    /// Batches written at once (1 to 64).
    #[arg(long, global = true, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// How the nodes write each batch: `sst`, one sorted SST file per shard ingested by
    /// every replica (the fast path); `rows`, one Raft write of the cells per shard.
    #[arg(long, global = true, value_enum, default_value_t = WritePath::Sst)]
    pub write_path: WritePath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WritePath {
    Sst,
    Rows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Json,
    None,
}

#[derive(Debug, Args)]
pub struct CsvArgs {
    /// The files, loaded in this order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Field delimiter (one ASCII character; `\t` for tabs).
    #[arg(long, default_value = ",")]
    pub delimiter: String,
    /// The files have no header: name the columns with --columns.
    #[arg(long, requires = "columns")]
    pub no_header: bool,
    /// The columns' names of files without a header.
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    pub columns: Vec<String>,
    /// The text that means NULL; default: the empty field.
    #[arg(long, value_name = "TEXT")]
    pub null: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct JsonlArgs {
    /// The files, loaded in this order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The columns (object keys); default: the keys of the first object.
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    pub columns: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn command(cmd: LoadCmd) -> anyhow::Result<ExitCode> {
    let conn = cmd.conn.conn();
    if let Some(id) = &cmd.resume {
        let cl = Cluster::connect(conn.target()?).await?;
        return resume(&cl, id, cmd.resume_max_rejects, &cmd.run).await;
    }
    let Some(op) = cmd.op else { anyhow::bail!("kho load needs a source (csv, jsonl, postgres), --resume JOB, status, verify or forget") };
    match op {
        LoadOp::Csv(a) => {
            let delimiter = match a.delimiter.as_str() {
                "\\t" | "\t" => b'\t',
                d if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
                d => anyhow::bail!("--delimiter: `{d}` is not one ASCII character"),
            };
            let files = a.files.iter().map(|f| FileId::of(f)).collect::<anyhow::Result<Vec<_>>>()?;
            if !a.no_header && !a.columns.is_empty() {
                anyhow::bail!(
                    "--columns names the columns of files without a header: give --no-header too (a header names them otherwise)"
                );
            }
            let columns = if a.no_header { Some(a.columns.clone()) } else { None };
            let source = SourceSpec::Csv { files, delimiter, has_header: !a.no_header, null: a.null.clone(), columns };
            start(conn, source, a.target, cmd.run).await
        }
        LoadOp::Jsonl(a) => {
            let files = a.files.iter().map(|f| FileId::of(f)).collect::<anyhow::Result<Vec<_>>>()?;
            let columns =
                if a.columns.is_empty() { source::open_jsonl(&files[0].path, None, None)?.columns().to_vec() } else { a.columns.clone() };
            start(conn, SourceSpec::Jsonl { files, columns }, a.target, cmd.run).await
        }
        LoadOp::Postgres(a) => super::postgres::command(conn, a, cmd.run).await,
        LoadOp::Status { job, tenant } => status(&Cluster::connect(conn.target()?).await?, job, tenant).await,
        LoadOp::Verify { job, from_source } => verify_job(&Cluster::connect(conn.target()?).await?, &job, from_source).await,
        LoadOp::Forget { job } => {
            let cl = Cluster::connect(conn.target()?).await?;
            let j = get_job(&cl, &job).await?;
            let req = pb::PutLoadJobRequest { job: Some(pb::LoadJob { run: job::new_run_id(), ..j }), op: pb::LoadJobOp::Delete as i32 };
            cl.load().await.put_load_job(req).await?;
            say!("forgot load job {job}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The columns of a file source and, for --infer, their proposed types.
fn file_columns(source: &SourceSpec, infer: bool) -> anyhow::Result<Vec<(String, super::mapping::ColType)>> {
    let mut src = run::open_file(source, 0, None)?;
    if infer {
        let samples = source::sample_columns(&mut src, 1_000)?;
        Ok(source::propose_types(&samples))
    } else {
        Ok(src.columns().iter().map(|c| (c.clone(), super::mapping::ColType::Text)).collect())
    }
}

/// The mapping of a new job: the file, or the flags' simple mapping (or, with --infer,
/// the proposal printed).
pub fn mapping_of(t: &TargetArgs, columns: &[(String, super::mapping::ColType)]) -> anyhow::Result<Option<Mapping>> {
    if t.infer {
        let family = t.family.as_deref().context("--infer needs --family (and --key)")?;
        anyhow::ensure!(!t.key.is_empty(), "--infer needs --key (and --family)");
        let m = Mapping::infer(columns, &t.key, family)?;
        print!("{}", m.to_toml());
        return Ok(None);
    }
    let m = match (&t.mapping, &t.family) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--mapping {}", path.display()))?;
            Mapping::parse_toml(&text).with_context(|| format!("--mapping {}", path.display()))?
        }
        (None, Some(family)) if !t.key.is_empty() => {
            let names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
            Mapping::simple(&names, &t.key, family)?
        }
        _ => anyhow::bail!("a mapping is needed: --mapping FILE, or --key COL[,COL...] with --family FAMILY"),
    };
    Ok(Some(m))
}

pub fn split_into(into: &str) -> anyhow::Result<(String, String)> {
    match into.split_once('/') {
        Some((t, x)) if !t.is_empty() && !x.is_empty() && !x.contains('/') => Ok((t.to_string(), x.to_string())),
        _ => anyhow::bail!("--into: `{into}` is not TENANT/TABLE"),
    }
}

/// Starts a new job over a file source.
async fn start(conn: ConnArgs, source: SourceSpec, t: TargetArgs, opts: RunOpts) -> anyhow::Result<ExitCode> {
    let columns = file_columns(&source, t.infer)?;
    let Some(mapping) = mapping_of(&t, &columns)? else { return Ok(ExitCode::SUCCESS) };
    start_job(conn, source, mapping, &t, opts).await
}

/// Creates the job (after checking the table) and runs it; a dry run only reads.
pub async fn start_job(conn: ConnArgs, source: SourceSpec, mapping: Mapping, t: &TargetArgs, opts: RunOpts) -> anyhow::Result<ExitCode> {
    let (tenant, table) = split_into(&t.into)?;
    let id = t.job.clone().unwrap_or_else(|| job::default_job_id(&table));
    kho_raft::load::check_job_id(&id).map_err(|e| anyhow::anyhow!("--job: {}", e.message))?;
    let reject_file = match &t.reject_file {
        Some(p) => run::absolute(p),
        // A dry run never writes over the reject file of a job.
        None if t.dry_run => run::default_reject_file(&source, &format!("{id}.dry-run.rejects.jsonl")),
        None => run::default_reject_file(&source, &format!("{id}.rejects.jsonl")),
    };
    let spec = Spec {
        version: SPEC_VERSION,
        tenant,
        table,
        source,
        mapping: mapping.to_toml(),
        reject_file,
        max_rejects: t.max_rejects,
        batch_rows: t.batch_rows,
    };
    if t.dry_run {
        return dry_run(&spec).await;
    }
    let cl = Cluster::connect(conn.target()?).await?;
    if !t.allow_nonempty {
        let families = spec.families()?;
        let now = checksum(&cl, &spec.tenant, &spec.table, &families, &[]).await?;
        let total = digest_from_pb(now.digest.as_ref())?.total();
        if total.rows > 0 {
            anyhow::bail!(
                "{}/{} already holds {} rows in the families {}: a load is verified against the whole table, so it goes into an empty one \
                 (or pass --allow-nonempty)",
                spec.tenant,
                spec.table,
                total.rows,
                families.join(", ")
            );
        }
    }
    let run_id = job::new_run_id();
    let record = pb::LoadJob {
        id: id.clone(),
        tenant: spec.tenant.clone(),
        table: spec.table.clone(),
        run: run_id.clone(),
        state: pb::LoadJobState::Running as i32,
        spec: spec.to_bytes(),
        checkpoint: Checkpoint::default().to_bytes(),
        ..Default::default()
    };
    cl.load().await.put_load_job(pb::PutLoadJobRequest { job: Some(record), op: pb::LoadJobOp::Create as i32 }).await?;
    say_err!("load job {id}: {} into {}/{} (reject file {})", spec.source.describe(), spec.tenant, spec.table, spec.reject_file.display());
    run_job(&cl, &id, &run_id, spec, Checkpoint::default(), &opts).await
}

async fn get_job(cl: &Cluster, id: &str) -> anyhow::Result<pb::LoadJob> {
    let resp = cl.load().await.get_load_job(pb::GetLoadJobRequest { id: id.to_string() }).await?;
    resp.into_inner().job.context("the node answered no job")
}

/// `kho load --resume JOB`.
async fn resume(cl: &Arc<Cluster>, id: &str, max_rejects: Option<u64>, opts: &RunOpts) -> anyhow::Result<ExitCode> {
    let j = get_job(cl, id).await?;
    let mut spec = Spec::from_bytes(&j.spec)?;
    if let Some(m) = max_rejects {
        spec.max_rejects = m;
    }
    let at = Checkpoint::from_bytes(&j.checkpoint)?;
    if j.state == pb::LoadJobState::Done as i32 {
        say!("load job {id} is done: {}", j.summary);
        return Ok(ExitCode::SUCCESS);
    }
    for f in spec.source.files() {
        f.check_unchanged()?;
    }
    let run_id = job::new_run_id();
    let record = pb::LoadJob {
        run: run_id.clone(),
        state: pb::LoadJobState::Running as i32,
        spec: Vec::new(),
        checkpoint: j.checkpoint.clone(),
        ..j.clone()
    };
    cl.load().await.put_load_job(pb::PutLoadJobRequest { job: Some(record), op: pb::LoadJobOp::Takeover as i32 }).await?;
    say_err!("load job {id}: resuming after {} rows read ({} loaded, {} rejected)", at.rows_read, at.rows_loaded, at.rows_rejected);
    run_job(cl, id, &run_id, spec, at, opts).await
}

/// Writes the job's record: a checkpoint, or its end.
async fn put(
    cl: &Cluster,
    id: &str,
    run: &str,
    spec: &Spec,
    at: &Checkpoint,
    state: pb::LoadJobState,
    summary: &str,
) -> anyhow::Result<()> {
    let record = pb::LoadJob {
        id: id.to_string(),
        tenant: spec.tenant.clone(),
        table: spec.table.clone(),
        run: run.to_string(),
        state: state as i32,
        // The summary is at most 4 KiB (LOAD_JOB_SUMMARY_BYTES_MAX); the spec stays as
        // created (the cluster keeps it).
        summary: truncate(summary, kho_raft::load::LOAD_JOB_SUMMARY_BYTES_MAX),
        checkpoint: at.to_bytes(),
        ..Default::default()
    };
    let mut last = None;
    for attempt in 0..10u64 {
        match cl.load().await.put_load_job(pb::PutLoadJobRequest { job: Some(record.clone()), op: pb::LoadJobOp::Update as i32 }).await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    || e.code() == tonic::Code::DeadlineExceeded
                    || e.code() == tonic::Code::Unknown =>
            {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("recording load job {id}"))),
        }
    }
    Err(anyhow::Error::new(last.expect("ten tries failed")).context(format!("recording load job {id}")))
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

pub async fn checksum(
    cl: &Cluster,
    tenant: &str,
    table: &str,
    families: &[String],
    buckets: &[u8],
) -> anyhow::Result<pb::ChecksumTableResponse> {
    let req = pb::ChecksumTableRequest {
        tenant: tenant.to_string(),
        table: table.to_string(),
        families: families.to_vec(),
        list_buckets: buckets.iter().map(|b| *b as u32).collect(),
        list_rows_max: if buckets.is_empty() { 0 } else { 100_000 },
    };
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_millis(run::CHECKSUM_TIMEOUT_MS));
    Ok(cl.load().await.checksum_table(req).await.context("ChecksumTable")?.into_inner())
}

/// Reads the source from `at`, writes its rows, checkpoints, and at the end verifies.
pub async fn run_job(cl: &Arc<Cluster>, id: &str, run_id: &str, spec: Spec, at: Checkpoint, opts: &RunOpts) -> anyhow::Result<ExitCode> {
    let mut digest = at.digest.digest()?;
    let mut acked = at.clone();
    if !at.finished {
        let (mut rx, reader) = run::spawn_reader(&spec, &at, ReadMode::Load);
        let mode = match opts.progress {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Json,
            m => m,
        };
        let total: u64 = spec.source.files().iter().map(|f| f.bytes).sum();
        let plain = spec.source.files().iter().all(|f| source::Compression::of(&f.path) == source::Compression::None);
        let progress = Progress {
            started: Instant::now(),
            rows_at_start: at.rows_read,
            bytes_at_start: at.bytes_read,
            total_bytes: (plain && total > 0).then_some(total),
        };
        let bar = (mode == ProgressMode::Bar).then(|| super::progress::bar(progress.total_bytes, at.bytes_read));
        let mut inflight = InFlight::new();
        let mut last_put = Instant::now();
        let mut last_line = Instant::now();
        let interval = Duration::from_secs_f64(opts.progress_secs.clamp(0.1, 3_600.0));
        // Checkpoints are meta-group proposals: at most one per CHECKPOINT_INTERVAL_MIN_MS.
        let checkpoint_every = interval.max(Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS));
        let mut failure: Option<anyhow::Error> = None;
        let concurrency = (opts.concurrency as usize).clamp(1, LOAD_CONCURRENCY_MAX);
        let sst = opts.write_path == WritePath::Sst;
        while let Some(batch) = rx.recv().await {
            let (tenant, table) = (spec.tenant.clone(), spec.table.clone());
            let cl2 = cl.clone();
            let rows = batch.rows;
            let h = tokio::spawn(async move {
                if rows.is_empty() {
                    Ok(TableDigest::default())
                } else {
                    run::send_rows(&cl2, &tenant, &table, rows, sst).await
                }
            });
            inflight.push(batch.end, h);
            while inflight.len() > concurrency {
                match inflight.pop().await.expect("a batch is in flight") {
                    Ok((mut end, d)) => {
                        run::fold(&mut digest, &mut end, d);
                        acked = end;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
            if last_put.elapsed() >= checkpoint_every {
                put(cl, id, run_id, &spec, &acked, pb::LoadJobState::Running, "").await?;
                last_put = Instant::now();
            }
            if let Some(b) = &bar {
                super::progress::update(b, &progress, &acked);
            } else if mode == ProgressMode::Json && last_line.elapsed() >= interval {
                say_err!("{}", run::progress_line(id, &progress, &acked));
                last_line = Instant::now();
            }
        }
        while failure.is_none() && inflight.len() > 0 {
            match inflight.pop().await.expect("a batch is in flight") {
                Ok((mut end, d)) => {
                    run::fold(&mut digest, &mut end, d);
                    acked = end;
                }
                Err(e) => failure = Some(e),
            }
        }
        inflight.abort();
        drop(rx);
        let read = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        // What is loaded is recorded first, whatever stopped the run.
        put(cl, id, run_id, &spec, &acked, pb::LoadJobState::Running, "").await?;
        let error = failure.or(read.err());
        if let Some(e) = error {
            let summary = format!(
                "load job {id}: stopped: {e:#}; read {}, loaded {}, rejected {} (kho load --resume {id} continues)",
                acked.rows_read, acked.rows_loaded, acked.rows_rejected
            );
            put(cl, id, run_id, &spec, &acked, pb::LoadJobState::Failed, &summary).await?;
            say!("{summary}");
            return Ok(ExitCode::from(1));
        }
        anyhow::ensure!(acked.finished, "the source ended without its last batch");
    }
    // A resumed PostgreSQL load read its rest by OFFSET: rows deleted or added before the
    // offset in between would go unnoticed by the job's digest; read the source again.
    let from_source = at.rows_read > 0 && matches!(spec.source, SourceSpec::Postgres { .. });
    let verdict = super::verify::verify(cl, &spec, &digest, from_source).await?;
    let summary = format!(
        "load job {id}: read {} rows, loaded {}, rejected {}{}; verification: {}",
        acked.rows_read,
        acked.rows_loaded,
        acked.rows_rejected,
        if acked.rows_rejected > 0 { format!(" (see {})", spec.reject_file.display()) } else { String::new() },
        verdict.text
    );
    let state = if verdict.passed { pb::LoadJobState::Done } else { pb::LoadJobState::Failed };
    put(cl, id, run_id, &spec, &acked, state, &summary).await?;
    say!("{summary}");
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--dry-run`: reads and maps every record, writes the reject file, loads nothing.
async fn dry_run(spec: &Spec) -> anyhow::Result<ExitCode> {
    let (mut rx, reader) = run::spawn_reader(spec, &Checkpoint::default(), ReadMode::Load);
    let mut last = Checkpoint::default();
    while let Some(b) = rx.recv().await {
        last = b.end;
    }
    let read = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    let summary = format!(
        "dry run: read {} rows, {} would load, rejected {}{}",
        last.rows_read,
        last.rows_loaded,
        last.rows_rejected,
        if last.rows_rejected > 0 { format!(" (see {})", spec.reject_file.display()) } else { String::new() }
    );
    say!("{summary}");
    if let Err(e) = read {
        say!("dry run stopped: {e:#}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(cl: &Arc<Cluster>, job: Option<String>, tenant: Option<String>) -> anyhow::Result<ExitCode> {
    if let Some(id) = job {
        let j = get_job(cl, &id).await?;
        let spec = Spec::from_bytes(&j.spec)?;
        let at = Checkpoint::from_bytes(&j.checkpoint)?;
        say!("job:       {}", j.id);
        say!("table:     {}/{}", j.tenant, j.table);
        say!("state:     {}", state_name(j.state));
        say!("owner:     {}", j.owner);
        say!("source:    {}", spec.source.describe());
        say!("rows:      read {}, loaded {}, rejected {}", at.rows_read, at.rows_loaded, at.rows_rejected);
        say!("position:  file {} {}", at.file, at.position.map(|p| format!("line {} (byte {})", p.line, p.byte)).unwrap_or_default());
        say!("rejects:   {}", spec.reject_file.display());
        say!("updated:   {}", crate::access_cmd::utc(j.updated_unix_ms));
        if !j.summary.is_empty() {
            say!("summary:   {}", j.summary);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let resp = cl.load().await.list_load_jobs(pb::ListLoadJobsRequest { tenant: tenant.unwrap_or_default() }).await?.into_inner();
    say!("{:<40} {:<30} {:<8} {:<24} OWNER", "JOB", "TABLE", "STATE", "UPDATED");
    for j in resp.jobs {
        say!(
            "{:<40} {:<30} {:<8} {:<24} {}",
            j.id,
            format!("{}/{}", j.tenant, j.table),
            state_name(j.state),
            crate::access_cmd::utc(j.updated_unix_ms),
            j.owner
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name(s: i32) -> &'static str {
    match pb::LoadJobState::try_from(s) {
        Ok(pb::LoadJobState::Running) => "running",
        Ok(pb::LoadJobState::Done) => "done",
        Ok(pb::LoadJobState::Failed) => "failed",
        Err(_) => "unknown",
    }
}

/// `kho load verify JOB`.
async fn verify_job(cl: &Arc<Cluster>, id: &str, from_source: bool) -> anyhow::Result<ExitCode> {
    let j = get_job(cl, id).await?;
    let spec = Spec::from_bytes(&j.spec)?;
    let at = Checkpoint::from_bytes(&j.checkpoint)?;
    anyhow::ensure!(at.finished, "load job {id} has not read its whole source yet: kho load --resume {id} first");
    let digest = at.digest.digest()?;
    let verdict = super::verify::verify(cl, &spec, &digest, from_source).await?;
    say!("load job {id}: verification: {}", verdict.text);
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
