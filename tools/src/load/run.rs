//! Running a load job: a reader thread reads the source and maps its records into batches
//! (rejecting what cannot be mapped); the async side sends each batch's rows, grouped by
//! shard, as `ImportRows` requests (at most `--concurrency` batches in flight), folds the
//! digests the nodes answer in source order, and checkpoints the job every few seconds:
//! everything before a checkpoint's position is loaded and in its digest, so a resume from
//! it loads nothing twice into the digest and misses nothing (rows written again after a
//! crash are written with the same cells: a load is idempotent).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kho_proto::v1::{self as pb, load_client::LoadClient};
use kho_raft::load::TableDigest;
use tokio::sync::{mpsc, Mutex};

use super::encode::{self, Limits, MappedRow};
use super::job::{digest_from_pb, Checkpoint, DigestJson, SourceSpec, Spec};
use super::mapping::Mapping;
use super::reject::{RejectMark, RejectWriter};
use super::source::{self, CsvOptions, FileSource, Next, Position};
use crate::client::{self, Conn, Target, Timeouts};

/// Most bytes of keys and values in one batch (an `ImportRows` request is at most this).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Most cells in one batch, count (the nodes take at most 100,000 per request).
pub const BATCH_CELLS_MAX: usize = 50_000;
/// Batches read ahead of the sender, count.
pub const READ_AHEAD_BATCHES_MAX: usize = 2;
/// Keys per `LocateShards` request, count (the nodes' limit).
const LOCATE_KEYS_MAX: usize = 1_000;
/// Tries of one batch when the cluster answers with a retryable error, count.
pub const IMPORT_ATTEMPTS_MAX: u32 = 40;
/// Longest pause between two tries of a batch, ms.
const IMPORT_BACKOFF_MAX_MS: u64 = 2_000;
/// How long one `ImportRows` may take, ms.
const IMPORT_TIMEOUT_MS: u64 = 60_000;
/// How long a `ChecksumTable` may take, ms (it reads the whole table).
pub const CHECKSUM_TIMEOUT_MS: u64 = 3_600_000;

/// A connection the loader's tasks share, made again (to the next endpoint that answers)
/// after a transport failure.
pub struct Cluster {
    target: Target,
    conn: Mutex<Conn>,
    /// Connections to shard leaders' client addresses (from `LocateShards`), at most
    /// [`LEADER_CONNS_MAX`]: rows go straight to the node that proposes them.
    leaders: Mutex<HashMap<String, Conn>>,
    /// Leader addresses that did not connect, and when: not tried again for
    /// [`LEADER_RETRY_AFTER_MS`] (the shared connection is used meanwhile).
    unreachable: Mutex<HashMap<String, Instant>>,
}

/// Most leader connections the loader keeps, count (beyond it, all are dropped and made
/// again on use).
const LEADER_CONNS_MAX: usize = 64;
/// How long a leader address that did not connect is not tried again, ms.
const LEADER_RETRY_AFTER_MS: u64 = 30_000;

impl Cluster {
    pub async fn connect(target: Target) -> anyhow::Result<Arc<Cluster>> {
        let conn = client::connect(&target, Self::timeouts()).await?;
        Ok(Arc::new(Cluster { target, conn: Mutex::new(conn), leaders: Mutex::default(), unreachable: Mutex::default() }))
    }

    /// The `Load` client for the shard leader at `addr` (a client address from
    /// `LocateShards`); the shared connection when `addr` is empty or does not connect.
    async fn load_at(&self, addr: &str) -> LoadClient<client::Svc> {
        // A node that listens on every interface may announce `0.0.0.0:…` or `[::]:…`.
        if addr.is_empty() || addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:") {
            return self.load().await;
        }
        if self.unreachable.lock().await.get(addr).is_some_and(|at| at.elapsed() < Duration::from_millis(LEADER_RETRY_AFTER_MS)) {
            return self.load().await;
        }
        let cached = self.leaders.lock().await.get(addr).cloned();
        let conn = match cached {
            Some(c) => c,
            None => {
                let target = Target { endpoints: crate::parse::EndpointList(vec![addr.to_string()]), ..self.target.clone() };
                match client::connect(&target, Self::timeouts()).await {
                    Ok(c) => {
                        let mut leaders = self.leaders.lock().await;
                        if leaders.len() >= LEADER_CONNS_MAX {
                            leaders.clear();
                        }
                        leaders.insert(addr.to_string(), c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::debug!(addr, error = %e, "the shard's leader does not connect; sending through the shared connection");
                        let mut unreachable = self.unreachable.lock().await;
                        if unreachable.len() >= LEADER_CONNS_MAX {
                            unreachable.clear();
                        }
                        unreachable.insert(addr.to_string(), Instant::now());
                        drop(unreachable);
                        return self.load().await;
                    }
                }
            }
        };
        LoadClient::with_interceptor(conn.channel, conn.bearer).max_decoding_message_size(client::RESPONSE_BYTES_MAX)
    }

    /// Forgets the connection to `addr` (it failed): the next call connects again.
    async fn forget_leader(&self, addr: &str) {
        self.leaders.lock().await.remove(addr);
    }

    fn timeouts() -> Timeouts {
        // Each call bounds its own time; the channel's bound is the longest of them.
        Timeouts { connect: client::CONNECT_TIMEOUT, request: Duration::from_millis(CHECKSUM_TIMEOUT_MS) }
    }

    pub async fn conn(&self) -> Conn {
        self.conn.lock().await.clone()
    }

    pub async fn load(&self) -> LoadClient<client::Svc> {
        let c = self.conn().await;
        LoadClient::with_interceptor(c.channel, c.bearer).max_decoding_message_size(client::RESPONSE_BYTES_MAX)
    }

    /// Connects again, to the first endpoint that answers.
    async fn reconnect(&self) {
        if let Ok(c) = client::connect(&self.target, Self::timeouts()).await {
            *self.conn.lock().await = c;
        }
    }
}

/// Whether a failed request may succeed when tried again: the cluster was unreachable or
/// busy, a leader changed, or a shard split between the lookup and the write.
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    match s.code() {
        Unavailable | DeadlineExceeded | Cancelled | Aborted | ResourceExhausted | Unknown => true,
        FailedPrecondition => s.message().contains("more than one shard"),
        Internal => s.message().contains("transport") || s.message().contains("connection"),
        _ => false,
    }
}

/// Writes rows, grouped by shard, one `ImportRows` per group (with `sst`, each an SST run)
/// sent to the shard's leader when `LocateShards` knows it, trying again (after looking
/// the shards up again) while the failures are retryable. Returns the digest the nodes
/// answered for all of them.
pub async fn send_rows(cl: &Cluster, tenant: &str, table: &str, rows: Vec<MappedRow>, sst: bool) -> anyhow::Result<TableDigest> {
    let mut digest = TableDigest::default();
    let mut remaining = rows;
    let mut attempt = 0u32;
    let mut backoff_ms = 50u64;
    loop {
        attempt += 1;
        let result = async {
            let groups = group_by_shard(cl, tenant, table, std::mem::take(&mut remaining)).await;
            let groups = match groups {
                Ok(g) => g,
                Err((rows, e)) => {
                    remaining = rows;
                    return Err(e);
                }
            };
            let mut groups = groups.into_iter();
            while let Some((leader, group)) = groups.next() {
                let req = pb::ImportRowsRequest {
                    tenant: tenant.to_string(),
                    table: table.to_string(),
                    rows: group.iter().map(to_pb).collect(),
                    sst,
                    ..Default::default()
                };
                let mut req = tonic::Request::new(req);
                req.set_timeout(Duration::from_millis(IMPORT_TIMEOUT_MS));
                let call = async { cl.load_at(&leader).await.import_rows(req).await };
                let answer = match tokio::time::timeout(Duration::from_millis(IMPORT_TIMEOUT_MS), call).await {
                    Ok(a) => a,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {IMPORT_TIMEOUT_MS} ms"))),
                };
                match answer {
                    Ok(resp) => {
                        digest.merge(&digest_from_pb(resp.get_ref().digest.as_ref()).map_err(|e| tonic::Status::internal(e.to_string()))?)
                    }
                    Err(e) => {
                        if !leader.is_empty()
                            && matches!(
                                e.code(),
                                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::DeadlineExceeded
                            )
                        {
                            cl.forget_leader(&leader).await;
                        }
                        remaining = group;
                        remaining.extend(groups.flat_map(|(_, rows)| rows));
                        return Err(e);
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(digest),
            Err(e) if retryable(&e) && attempt < IMPORT_ATTEMPTS_MAX => {
                tracing::debug!(attempt, error = %e, "import failed; trying again");
                if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown || e.code() == tonic::Code::Internal {
                    cl.reconnect().await;
                }
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(IMPORT_BACKOFF_MAX_MS);
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("writing rows into {tenant}/{table} (try {attempt} of {IMPORT_ATTEMPTS_MAX})"))
                )
            }
        }
    }
}

/// The rows grouped by the shard that holds them (`LocateShards`, hashed row keys
/// included), each group with its shard leader's client address (empty: unknown); on
/// failure, the rows back with the error.
async fn group_by_shard(
    cl: &Cluster,
    tenant: &str,
    table: &str,
    rows: Vec<MappedRow>,
) -> Result<Vec<(String, Vec<MappedRow>)>, (Vec<MappedRow>, tonic::Status)> {
    let mut shard_of = Vec::with_capacity(rows.len());
    let mut leader_of: HashMap<u64, String> = HashMap::new();
    for chunk in rows.chunks(LOCATE_KEYS_MAX) {
        let req = pb::LocateShardsRequest {
            tenant: tenant.to_string(),
            table: table.to_string(),
            keys: chunk.iter().map(|r| r.key.clone()).collect(),
            range: None,
        };
        let mut data = cl.conn().await.data();
        let mut req = tonic::Request::new(req);
        req.set_timeout(Duration::from_millis(IMPORT_TIMEOUT_MS));
        match tokio::time::timeout(Duration::from_millis(IMPORT_TIMEOUT_MS), data.locate_shards(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                for sh in resp.shards {
                    leader_of.insert(sh.id, sh.leader_address);
                }
                shard_of.extend(resp.key_shard_ids);
            }
            Ok(Err(e)) => return Err((rows, e)),
            Err(_) => return Err((rows, tonic::Status::deadline_exceeded("LocateShards: no answer"))),
        }
    }
    if shard_of.len() != rows.len() {
        return Err((rows, tonic::Status::internal("LocateShards answered a different number of keys")));
    }
    let mut by_shard: Vec<(u64, Vec<MappedRow>)> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (row, shard) in rows.into_iter().zip(shard_of) {
        let i = *index.entry(shard).or_insert_with(|| {
            by_shard.push((shard, Vec::new()));
            by_shard.len() - 1
        });
        by_shard[i].1.push(row);
    }
    Ok(by_shard.into_iter().map(|(shard, rows)| (leader_of.get(&shard).cloned().unwrap_or_default(), rows)).collect())
}

pub fn to_pb(r: &MappedRow) -> pb::Row {
    pb::Row {
        key: r.key.clone(),
        cells: r.cells.iter().map(|(f, q, v)| pb::Cell { family: f.clone(), qualifier: q.clone(), value: v.clone() }).collect(),
        cells_withheld: false,
    }
}

/// Rows read and mapped, and where the source stands after them.
pub struct Batch {
    pub rows: Vec<MappedRow>,
    /// Where each row came from: (file index, line).
    pub origins: Vec<(usize, u64)>,
    /// The checkpoint once these rows (and every batch before) are loaded; its digest is
    /// not filled in by the reader.
    pub end: Checkpoint,
}

/// A source being read: a file, or a PostgreSQL query.
pub enum AnySource {
    File(FileSource),
    Pg(super::postgres::PgSource),
}

impl AnySource {
    pub fn columns(&self) -> &[String] {
        match self {
            AnySource::File(s) => s.columns(),
            AnySource::Pg(s) => s.columns(),
        }
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> anyhow::Result<Next> {
        match self {
            AnySource::File(s) => s.next(),
            AnySource::Pg(s) => s.next(),
        }
    }

    pub fn position(&self) -> Position {
        match self {
            AnySource::File(s) => s.position(),
            AnySource::Pg(s) => s.position(),
        }
    }
}

/// How many parts a source is read in: its files, or one query.
pub fn parts(spec: &SourceSpec) -> usize {
    match spec {
        SourceSpec::Postgres { .. } => 1,
        s => s.files().len(),
    }
}

/// The name of part `index` in messages and the reject file.
pub fn part_name(spec: &SourceSpec, index: usize) -> String {
    match spec {
        SourceSpec::Postgres { .. } => "postgres".to_string(),
        s => s.files()[index].path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// Opens part `index` of a source, at `resume` when given.
pub fn open_part(rt: &tokio::runtime::Handle, spec: &SourceSpec, index: usize, resume: Option<&Position>) -> anyhow::Result<AnySource> {
    match spec {
        SourceSpec::Postgres { dsn, query, order_by } => {
            Ok(AnySource::Pg(super::postgres::PgSource::open(rt, dsn, query, order_by, resume)?))
        }
        _ => Ok(AnySource::File(open_file(spec, index, resume)?)),
    }
}

/// Opens file `index` of a file source, at `resume` when given.
pub fn open_file(spec: &SourceSpec, index: usize, resume: Option<&Position>) -> anyhow::Result<FileSource> {
    match spec {
        SourceSpec::Csv { files, delimiter, has_header, null, columns } => {
            let opts = CsvOptions { delimiter: *delimiter, has_header: *has_header, null: null.clone(), columns: columns.clone() };
            source::open_csv(&files[index].path, &opts, resume)
        }
        SourceSpec::Jsonl { files, columns } => source::open_jsonl(&files[index].path, Some(columns.clone()), resume),
        SourceSpec::Postgres { .. } => anyhow::bail!("a PostgreSQL source has no files"),
    }
}

/// What the reader does with the records it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Rejects go to the reject file (a load or a dry run).
    Load,
    /// Rejects are not written again (verifying from the source).
    Verify,
}

/// Reads the source from `start`, maps its records and sends batches of rows; rejected
/// records go to the reject file (bounded by `--max-rejects`). The last batch sent has
/// `end.finished` set. Runs on a thread of its own (files and mapping are blocking work).
pub fn read_source(
    rt: tokio::runtime::Handle,
    spec: &Spec,
    start: &Checkpoint,
    mode: ReadMode,
    limits: Limits,
    tx: mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    let mapping = Mapping::parse_toml(&spec.mapping).context("the job's mapping")?;
    let mut rejects = match mode {
        ReadMode::Load => Some(RejectWriter::open_append(
            &spec.reject_file,
            spec.max_rejects,
            RejectMark { count: start.rows_rejected, bytes: start.reject_file_bytes },
        )?),
        ReadMode::Verify => None,
    };
    let mut at = start.clone();
    let mut synced = start.rows_rejected;
    let parts = parts(&spec.source);
    let batch_rows = spec.batch_rows.max(1);
    let send = |b: Batch| tx.blocking_send(b).map_err(|_| anyhow::anyhow!("the loader stopped"));
    for index in start.file..parts {
        let resume = if index == start.file { start.position.clone() } else { None };
        let mut src = open_part(&rt, &spec.source, index, resume.as_ref())?;
        let name = part_name(&spec.source, index);
        let bound = mapping.bind(src.columns()).with_context(|| format!("mapping the columns of {name}"))?;
        let mut batch = Batch { rows: Vec::new(), origins: Vec::new(), end: at.clone() };
        let mut keys: HashMap<Vec<u8>, u64> = HashMap::new();
        let (mut bytes, mut cells) = (0usize, 0usize);
        let before = src.position().byte;
        let mut last_byte = before;
        loop {
            let next = src.next()?;
            let pos = src.position();
            at.bytes_read += pos.byte.saturating_sub(last_byte);
            last_byte = pos.byte;
            match next {
                Next::End => break,
                Next::Bad { pos, reason, raw } => {
                    at.rows_read += 1;
                    if let Some(r) = rejects.as_mut() {
                        r.reject(&name, &pos, &reason, &raw)?;
                    }
                    at.rows_rejected += 1;
                }
                Next::Record(rec) => {
                    at.rows_read += 1;
                    let mapped = encode::map_record(&bound, &rec.fields, &limits).and_then(|row| match keys.get(&row.key) {
                        Some(line) => Err(format!("row key repeats the row at line {line}")),
                        None => Ok(row),
                    });
                    match mapped {
                        Ok(row) => {
                            keys.insert(row.key.clone(), rec.pos.line);
                            // Counted as the nodes count it (the row key in every cell's key).
                            bytes +=
                                row.cells.iter().map(|(_, q, v)| kho_rpc::load::stored_cell_bytes(&row.key, q, v) as usize).sum::<usize>();
                            cells += row.cells.len();
                            batch.origins.push((index, rec.pos.line));
                            batch.rows.push(row);
                        }
                        Err(reason) => {
                            if let Some(r) = rejects.as_mut() {
                                r.reject(&name, &rec.pos, &reason, &rec.raw)?;
                            }
                            at.rows_rejected += 1;
                        }
                    }
                }
            }
            if batch.rows.len() >= batch_rows || bytes >= BATCH_BYTES_MAX || cells >= BATCH_CELLS_MAX {
                at.file = index;
                at.position = Some(src.position());
                at.rows_loaded += batch.rows.len() as u64;
                at.reject_file_bytes = synced_mark(rejects.as_mut(), &mut synced)?;
                batch.end = at.clone();
                send(std::mem::replace(&mut batch, Batch { rows: Vec::new(), origins: Vec::new(), end: at.clone() }))?;
                keys.clear();
                bytes = 0;
                cells = 0;
            }
        }
        at.file = index + 1;
        at.position = None;
        at.rows_loaded += batch.rows.len() as u64;
        at.reject_file_bytes = synced_mark(rejects.as_mut(), &mut synced)?;
        batch.end = at.clone();
        send(batch)?;
    }
    at.finished = true;
    at.file = parts;
    at.position = None;
    send(Batch { rows: Vec::new(), origins: Vec::new(), end: at })?;
    Ok(())
}

/// The reject file's length for a checkpoint, synced to disk first when it grew: a
/// checkpoint never counts a reject line a crash of the machine could lose.
fn synced_mark(rejects: Option<&mut RejectWriter>, synced: &mut u64) -> anyhow::Result<u64> {
    let Some(r) = rejects else { return Ok(0) };
    if r.count() != *synced {
        r.sync()?;
        *synced = r.count();
    }
    Ok(r.mark().bytes)
}

/// Starts [`read_source`] from `start` on a thread of its own: the batches it reads, and
/// the thread to join for its result once they end.
pub fn spawn_reader(
    spec: &Spec,
    start: &Checkpoint,
    mode: ReadMode,
) -> (mpsc::Receiver<Batch>, std::thread::JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = mpsc::channel::<Batch>(READ_AHEAD_BATCHES_MAX);
    let (spec, start) = (spec.clone(), start.clone());
    let rt = tokio::runtime::Handle::current();
    (rx, std::thread::spawn(move || read_source(rt, &spec, &start, mode, Limits::default(), tx)))
}

/// Where the reject file of a job goes by default: beside the (first) source file, or in
/// the current directory (as an absolute path: a resume from elsewhere writes to the same
/// file); `name` is `JOB.rejects.jsonl` (or `JOB.dry-run.rejects.jsonl`).
pub fn default_reject_file(spec_source: &SourceSpec, name: &str) -> PathBuf {
    let cwd = || std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dir = spec_source.files().first().and_then(|f| f.path.parent().map(|p| p.to_path_buf())).unwrap_or_else(cwd);
    dir.join(name)
}

/// `path` made absolute (against the current directory), so that a resume run elsewhere
/// writes the same file.
pub fn absolute(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Batches being written, in source order: the head's end is the next checkpoint.
pub struct InFlight {
    queue: VecDeque<(Checkpoint, tokio::task::JoinHandle<anyhow::Result<TableDigest>>)>,
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight { queue: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn push(&mut self, end: Checkpoint, h: tokio::task::JoinHandle<anyhow::Result<TableDigest>>) {
        self.queue.push_back((end, h));
    }

    /// Waits for the oldest batch: its end and the digest of its rows.
    pub async fn pop(&mut self) -> Option<anyhow::Result<(Checkpoint, TableDigest)>> {
        let (end, h) = self.queue.pop_front()?;
        Some(match h.await {
            Ok(Ok(d)) => Ok((end, d)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a writer task failed: {e}")),
        })
    }

    pub fn abort(&mut self) {
        for (_, h) in self.queue.drain(..) {
            h.abort();
        }
    }
}

/// The progress of a run, for the bar or the JSON lines.
pub struct Progress {
    pub started: Instant,
    pub rows_at_start: u64,
    pub bytes_at_start: u64,
    pub total_bytes: Option<u64>,
}

impl Progress {
    pub fn rates(&self, at: &Checkpoint) -> (f64, f64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        ((at.rows_read - self.rows_at_start) as f64 / secs, (at.bytes_read - self.bytes_at_start) as f64 / secs / 1e6)
    }
}

/// The JSON line of a progress interval (when stderr is not a terminal).
pub fn progress_line(job: &str, p: &Progress, at: &Checkpoint) -> String {
    let (rows_s, mb_s) = p.rates(at);
    let eta = p.total_bytes.filter(|_| mb_s > 0.0).map(|t| (t.saturating_sub(at.bytes_read)) as f64 / (mb_s * 1e6));
    serde_json::json!({
        "job": job,
        "rows_read": at.rows_read,
        "rows_loaded": at.rows_loaded,
        "rows_rejected": at.rows_rejected,
        "bytes_read": at.bytes_read,
        "rows_per_s": rows_s.round(),
        "mb_per_s": (mb_s * 100.0).round() / 100.0,
        "eta_s": eta.map(|e| e.round()),
        "elapsed_s": p.started.elapsed().as_secs(),
    })
    .to_string()
}

/// The digest of everything up to `end`.
pub fn fold(digest: &mut TableDigest, end: &mut Checkpoint, batch: TableDigest) {
    digest.merge(&batch);
    end.digest = DigestJson::of(digest);
}
