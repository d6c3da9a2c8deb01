//! Reading the source files of `kho load`: CSV and JSON Lines, plain, gzip (`.gz`) or zstd
//! (`.zst`), streaming with bounded memory, and resumable at any record.
//!
//! A record's [`Position`] is exact: the 1-based line where it starts, the byte offset of its
//! first byte in the (decompressed) stream, and its 0-based ordinal among data records. A
//! checkpoint stores [`FileSource::position`] (where the next record starts); opening the file
//! again with it yields the same records with the same positions as an uninterrupted read.
//!
//! A malformed record (invalid JSON, a CSV record with the wrong number of fields) is
//! [`Next::Bad`], for the reject file; an I/O error, a corrupt compressed stream or a record
//! over its size bound is an error that stops the load.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::encode::Field;
use super::mapping::{infer_type_from_samples, ColType};

/// Read buffer of a source file, bytes.
pub const READ_BUFFER_BYTES: usize = 256 << 10;
/// Longest line of a JSON Lines file, bytes (without its line end).
pub const JSONL_LINE_BYTES_MAX: usize = 64 << 20;
/// Longest CSV record, bytes of field data (an unclosed quote otherwise reads the whole file).
pub const CSV_RECORD_BYTES_MAX: usize = 64 << 20;
/// Most fields in one CSV record.
pub const CSV_FIELDS_MAX: usize = 1 << 16;
/// Longest `raw` text of a record (for the reject file), bytes, before a final `…`.
pub const RAW_BYTES_MAX: usize = 1024;

const UTF8_BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Where a record starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// 1-based line where the record starts (the header, if any, is line 1).
    pub line: u64,
    /// Offset of the record's first byte in the (decompressed) stream.
    pub byte: u64,
    /// 0-based ordinal among data records (a bad record has one too).
    pub record: u64,
}

/// One data record of a source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    pub pos: Position,
    /// One per column of the source, in its order.
    pub fields: Vec<Field>,
    /// The record as text (lossy UTF-8), at most `RAW_BYTES_MAX` bytes then `…`: for the reject file.
    pub raw: String,
}

/// What a source yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Record(SourceRecord),
    /// A malformed record: for the reject file, then the load goes on.
    Bad {
        pos: Position,
        reason: String,
        raw: String,
    },
    End,
}

/// A source file's compression, from its name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    /// `.gz`: gzip, one member or several concatenated.
    Gzip,
    /// `.zst`: zstd, one frame or several.
    Zstd,
}

impl Compression {
    pub fn of(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("gz") => Compression::Gzip,
            Some(e) if e.eq_ignore_ascii_case("zst") => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// Options of a CSV source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    /// The first record names the columns.
    pub has_header: bool,
    /// The text that means NULL; `None`: the empty field is NULL.
    pub null: Option<String>,
    /// The column names of a file without a header (and only then).
    pub columns: Option<Vec<String>>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { delimiter: b',', has_header: true, null: None, columns: None }
    }
}

/// A CSV or JSON Lines source, being read.
pub enum FileSource {
    Csv(CsvSource),
    Jsonl(JsonlSource),
}

impl FileSource {
    /// The source's columns, in its order: what `Mapping::bind` binds to.
    pub fn columns(&self) -> &[String] {
        match self {
            FileSource::Csv(s) => &s.columns,
            FileSource::Jsonl(s) => &s.columns,
        }
    }

    /// The next record, a malformed one, or the end.
    pub fn next(&mut self) -> anyhow::Result<Next> {
        match self {
            FileSource::Csv(s) => s.next(),
            FileSource::Jsonl(s) => s.next(),
        }
    }

    /// Where the next record starts: what a checkpoint stores, to resume with.
    pub fn position(&self) -> Position {
        match self {
            FileSource::Csv(s) => Position { line: s.reader.line, byte: s.reader.byte, record: s.next_record },
            FileSource::Jsonl(s) => Position { line: s.line, byte: s.byte, record: s.next_record },
        }
    }
}

/// Opens `path` decompressed and buffered, at byte `start` of the decompressed stream (a
/// plain file is seeked, a compressed one decompressed and discarded up to it). At 0, a
/// UTF-8 byte order mark is skipped. Returns the stream and the byte it is at.
fn open_stream(path: &Path, start: u64) -> anyhow::Result<(Box<dyn BufRead + Send>, u64)> {
    let shown = path.display();
    let mut file = File::open(path).with_context(|| format!("opening {shown}"))?;
    let compression = Compression::of(path);
    if compression == Compression::None && start > 0 {
        let len = file.metadata().with_context(|| format!("reading {shown}"))?.len();
        if start > len {
            bail!("{shown}: the checkpoint is at byte {start} but the file has {len} bytes: was it replaced?");
        }
        file.seek(SeekFrom::Start(start)).with_context(|| format!("reading {shown}"))?;
    }
    let mut raw: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).with_context(|| format!("reading {shown}"))?),
    };
    if compression != Compression::None && start > 0 {
        let skipped = io::copy(&mut (&mut raw).take(start), &mut io::sink()).with_context(|| format!("reading {shown}"))?;
        if skipped < start {
            bail!("{shown}: the checkpoint is at byte {start} but the file decompresses to {skipped} bytes: was it replaced?");
        }
    }
    let mut at = start;
    if start == 0 {
        // The first 3 bytes (read_to_end goes on through short reads), put back unless a BOM.
        let mut head = Vec::with_capacity(3);
        (&mut raw).take(3).read_to_end(&mut head).with_context(|| format!("reading {shown}"))?;
        if head == UTF8_BOM {
            head.clear();
            at = 3;
        }
        raw = Box::new(io::Cursor::new(head).chain(raw));
    }
    Ok((Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, raw)), at))
}

/// `bytes` as text for a reject line: lossy UTF-8, at most `RAW_BYTES_MAX` bytes, then `…`.
fn raw_text(bytes: &[u8]) -> String {
    let cut = bytes.len() > RAW_BYTES_MAX;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(RAW_BYTES_MAX)]).into_owned();
    // A replacement character may have grown it; cut at a character boundary.
    if s.len() > RAW_BYTES_MAX {
        let mut end = RAW_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if cut {
        s.push('…');
    }
    s
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// CSV records on csv-core, with exact positions: line ends before a record are skipped
/// here (csv-core would skip them inside the record, and a CRLF's LF after it).
struct CsvReader {
    path: PathBuf,
    /// Boxed: its transition tables are kilobytes.
    core: Box<csv_core::Reader>,
    input: Box<dyn BufRead + Send>,
    /// Where the next record starts (after `skip_line_ends`).
    byte: u64,
    line: u64,
    /// The last record's field data and field ends.
    out: Vec<u8>,
    ends: Vec<usize>,
    fields: usize,
    record_bytes_max: usize,
    /// The error that stopped the reader, returned again by every later call.
    failed: Option<String>,
}

impl CsvReader {
    fn new(path: &Path, delimiter: u8, input: Box<dyn BufRead + Send>, byte: u64, line: u64, record_bytes_max: usize) -> Self {
        let core = Box::new(csv_core::ReaderBuilder::new().delimiter(delimiter).build());
        CsvReader {
            path: path.to_path_buf(),
            core,
            input,
            byte,
            line,
            out: vec![0; 4096],
            ends: vec![0; 64],
            fields: 0,
            record_bytes_max,
            failed: None,
        }
    }

    /// Consumes the CR and LF bytes (line ends, blank lines) before the next record.
    fn skip_line_ends(&mut self) -> anyhow::Result<()> {
        loop {
            let buf = self.input.fill_buf().with_context(|| format!("reading {}", self.path.display()))?;
            let n = buf.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
            let (len, newlines) = (buf.len(), count_newlines(&buf[..n]));
            self.input.consume(n);
            self.byte += n as u64;
            self.line += newlines;
            if n < len || len == 0 {
                return Ok(());
            }
        }
    }

    /// Reads the next record into `out`/`ends`; `false` at the end. Starts at `byte`/`line`
    /// (past any line ends) and leaves them at the next record's start. An error is for
    /// good: every later call returns it again. One found past a record's end (reading the
    /// line ends after it) comes at the next call, and the record is returned first.
    fn read_record(&mut self) -> anyhow::Result<bool> {
        if let Some(failed) = &self.failed {
            bail!("{failed}");
        }
        let result = self.read_record_inner();
        if let Err(e) = &result {
            self.failed = Some(format!("{e:#}"));
        }
        result
    }

    fn read_record_inner(&mut self) -> anyhow::Result<bool> {
        use csv_core::ReadRecordResult::*;
        let start_line = self.line;
        let (mut outlen, mut endlen) = (0, 0);
        loop {
            let buf = self.input.fill_buf().with_context(|| format!("reading {}", self.path.display()))?;
            let (res, nin, nout, nend) = self.core.read_record(buf, &mut self.out[outlen..], &mut self.ends[endlen..]);
            let newlines = count_newlines(&buf[..nin]);
            self.input.consume(nin);
            self.byte += nin as u64;
            self.line += newlines;
            outlen += nout;
            endlen += nend;
            match res {
                InputEmpty => {}
                OutputFull => {
                    if self.out.len() >= self.record_bytes_max {
                        bail!(
                            "{}: the record at line {start_line} is longer than {} bytes (an unclosed quote?)",
                            self.path.display(),
                            self.record_bytes_max
                        );
                    }
                    let len = (self.out.len() * 2).min(self.record_bytes_max);
                    self.out.resize(len, 0);
                }
                OutputEndsFull => {
                    if self.ends.len() >= CSV_FIELDS_MAX {
                        bail!("{}: the record at line {start_line} has more than {CSV_FIELDS_MAX} fields", self.path.display());
                    }
                    let len = (self.ends.len() * 2).min(CSV_FIELDS_MAX);
                    self.ends.resize(len, 0);
                }
                Record => {
                    self.fields = endlen;
                    if let Err(e) = self.skip_line_ends() {
                        self.failed = Some(format!("{e:#}"));
                    }
                    return Ok(true);
                }
                End => return Ok(false),
            }
        }
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.out[start..self.ends[i]]
    }

    /// The record as CSV text again (quoted where needed), for the reject file.
    fn raw(&self, delimiter: u8) -> String {
        let mut text = Vec::new();
        for i in 0..self.fields {
            if i > 0 {
                text.push(delimiter);
            }
            let f = self.field(i);
            if f.iter().any(|&b| b == delimiter || b == b'"' || b == b'\n' || b == b'\r') {
                text.push(b'"');
                for &b in f {
                    if b == b'"' {
                        text.push(b'"');
                    }
                    text.push(b);
                }
                text.push(b'"');
            } else {
                text.extend_from_slice(f);
            }
            if text.len() > RAW_BYTES_MAX {
                break;
            }
        }
        raw_text(&text)
    }
}

/// A CSV source (see `open_csv`).
pub struct CsvSource {
    reader: CsvReader,
    columns: Vec<String>,
    has_header: bool,
    delimiter: u8,
    null: Option<Vec<u8>>,
    next_record: u64,
}

/// Opens a CSV file; with `resume`, it continues at that record (its header, if any, is
/// read from the start of the file first).
pub fn open_csv(path: &Path, opts: &CsvOptions, resume: Option<&Position>) -> anyhow::Result<FileSource> {
    open_csv_bounded(path, opts, resume, CSV_RECORD_BYTES_MAX)
}

fn open_csv_bounded(path: &Path, opts: &CsvOptions, resume: Option<&Position>, record_bytes_max: usize) -> anyhow::Result<FileSource> {
    let shown = path.display();
    let (input, byte) = open_stream(path, 0)?;
    let mut reader = CsvReader::new(path, opts.delimiter, input, byte, 1, record_bytes_max);
    reader.skip_line_ends()?;
    let columns = match (&opts.columns, opts.has_header) {
        (Some(_), true) => bail!("{shown}: column names are given for a file with a header: give them only for a file without one"),
        (None, false) => bail!("{shown}: a CSV file without a header needs its column names"),
        (Some(columns), false) => columns.clone(),
        (None, true) => {
            if !reader.read_record()? {
                bail!("{shown}: the file is empty: no header");
            }
            (0..reader.fields)
                .map(|i| {
                    String::from_utf8(reader.field(i).to_vec()).map_err(|e| {
                        anyhow::anyhow!("{shown}: header column {}: invalid UTF-8 at byte {}", i + 1, e.utf8_error().valid_up_to())
                    })
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    let mut next_record = 0;
    if let Some(pos) = resume {
        if pos.byte < reader.byte {
            bail!("{shown}: the checkpoint at byte {} is before the first record (byte {})", pos.byte, reader.byte);
        }
        let (input, byte) = open_stream(path, pos.byte)?;
        reader = CsvReader::new(path, opts.delimiter, input, byte, pos.line, record_bytes_max);
        reader.skip_line_ends()?;
        next_record = pos.record;
    }
    Ok(FileSource::Csv(CsvSource {
        reader,
        columns,
        has_header: opts.has_header,
        delimiter: opts.delimiter,
        null: opts.null.as_ref().map(|n| n.as_bytes().to_vec()),
        next_record,
    }))
}

impl CsvSource {
    fn next(&mut self) -> anyhow::Result<Next> {
        let pos = Position { line: self.reader.line, byte: self.reader.byte, record: self.next_record };
        if !self.reader.read_record()? {
            return Ok(Next::End);
        }
        self.next_record += 1;
        let raw = self.reader.raw(self.delimiter);
        if self.reader.fields != self.columns.len() {
            let reason = if self.has_header {
                format!("record has {} fields, the header has {}", self.reader.fields, self.columns.len())
            } else {
                format!("record has {} fields, {} columns are named", self.reader.fields, self.columns.len())
            };
            return Ok(Next::Bad { pos, reason, raw });
        }
        let fields = (0..self.reader.fields)
            .map(|i| {
                let f = self.reader.field(i);
                let is_null = match &self.null {
                    None => f.is_empty(),
                    Some(null) => f == null.as_slice(),
                };
                if is_null {
                    Field::Null
                } else {
                    Field::Raw(f.to_vec())
                }
            })
            .collect();
        Ok(Next::Record(SourceRecord { pos, fields, raw }))
    }
}

/// A JSON Lines source (see `open_jsonl`).
pub struct JsonlSource {
    path: PathBuf,
    input: Box<dyn BufRead + Send>,
    columns: Vec<String>,
    index: HashMap<String, usize>,
    /// Where the next line starts.
    byte: u64,
    line: u64,
    next_record: u64,
    line_bytes_max: usize,
    /// The next line that is not blank (read ahead, so `position` is exact), and its length
    /// with its line end; 0 at the end of the file.
    buf: Vec<u8>,
    pending: usize,
    /// The error that stopped the reader, returned again by every later call.
    failed: Option<String>,
}

/// A JSON object's members in the order written, values as their raw JSON text.
struct OrderedObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for OrderedObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// serde_json's message without its location (it would say line 1: a line of the file is
/// parsed alone), and the column instead.
fn json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message.rfind(" at line ").map_or(message.as_str(), |i| &message[..i]);
    format!("{message} (at column {})", e.column())
}

/// Parses one line as a JSON object.
fn parse_object(text: &str) -> Result<OrderedObject<'_>, String> {
    serde_json::from_str::<OrderedObject>(text).map_err(|e| format!("not a JSON object: {}", json_error(&e)))
}

/// Valid JSON text without the whitespace outside its strings: the compact form, with its
/// keys in the order written, and its numbers and string escapes as written.
fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// A JSON value as a field: null → NULL; a string → its text (for a json column, that text
/// must be JSON itself, as in a CSV field); a number → its text as written (no rounding
/// through a float); true/false → that text; an object or array → JSON (compact).
fn json_field(value: &RawValue) -> Result<Field, String> {
    let text = value.get();
    Ok(match text.as_bytes().first() {
        Some(b'n') => Field::Null,
        Some(b'"') => Field::Raw(serde_json::from_str::<Cow<str>>(text).map_err(|e| json_error(&e))?.into_owned().into_bytes()),
        Some(b'{' | b'[') => Field::Json(compact_json(text)),
        _ => Field::Raw(text.as_bytes().to_vec()),
    })
}

/// Reads one line into `buf` (line end included): its length, 0 at the end.
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, line_bytes_max: usize, path: &Path, line: u64) -> anyhow::Result<usize> {
    buf.clear();
    // The line, its CR LF, and one byte more to see it is too long.
    let n = input.take(line_bytes_max as u64 + 3).read_until(b'\n', buf).with_context(|| format!("reading {}", path.display()))?;
    let content = buf.strip_suffix(b"\n").unwrap_or(buf);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.len() > line_bytes_max {
        bail!("{}: line {line} is longer than {line_bytes_max} bytes", path.display());
    }
    Ok(n)
}

/// Opens a JSON Lines file: one JSON object per line. The columns are `columns`, or the
/// keys of the file's first object, in order. With `resume`, it continues at that record.
pub fn open_jsonl(path: &Path, columns: Option<Vec<String>>, resume: Option<&Position>) -> anyhow::Result<FileSource> {
    open_jsonl_bounded(path, columns, resume, JSONL_LINE_BYTES_MAX)
}

fn open_jsonl_bounded(
    path: &Path,
    columns: Option<Vec<String>>,
    resume: Option<&Position>,
    line_bytes_max: usize,
) -> anyhow::Result<FileSource> {
    let shown = path.display();
    let columns = match columns {
        Some(columns) => columns,
        None => {
            let (mut input, _) = open_stream(path, 0)?;
            let mut buf = Vec::new();
            let mut line = 1;
            loop {
                if read_line(&mut input, &mut buf, line_bytes_max, path, line)? == 0 {
                    bail!("{shown}: no JSON object in the file to take the column names from: give them");
                }
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    break;
                }
                line += 1;
            }
            let text = std::str::from_utf8(&buf)
                .map_err(|e| anyhow::anyhow!("{shown}: line {line}: invalid UTF-8 at byte {}", e.valid_up_to()))?;
            let object = parse_object(text).map_err(|e| {
                anyhow::anyhow!("{shown}: line {line}: {e}; the column names are taken from the first object: give them instead")
            })?;
            object.0.into_iter().map(|(k, _)| k).collect()
        }
    };
    let mut index = HashMap::new();
    for (i, c) in columns.iter().enumerate() {
        if index.insert(c.clone(), i).is_some() {
            bail!("{shown}: column {c:?} is named twice");
        }
    }
    let (input, byte) = open_stream(path, resume.map_or(0, |p| p.byte))?;
    let (line, next_record) = resume.map_or((1, 0), |p| (p.line, p.record));
    let mut source = JsonlSource {
        path: path.to_path_buf(),
        input,
        columns,
        index,
        byte,
        line,
        next_record,
        line_bytes_max,
        buf: Vec::new(),
        pending: 0,
        failed: None,
    };
    source.advance()?;
    Ok(FileSource::Jsonl(source))
}

impl JsonlSource {
    /// Reads lines up to the next one that is not blank, into `buf`, its length into
    /// `pending` (0 at the end); `byte`/`line` are then where it starts.
    fn advance(&mut self) -> anyhow::Result<()> {
        loop {
            self.pending = read_line(&mut self.input, &mut self.buf, self.line_bytes_max, &self.path, self.line)?;
            if self.pending == 0 || !self.buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            self.byte += self.pending as u64;
            self.line += 1;
        }
    }

    /// The record in `buf`, then the next line read ahead (an error reading it comes at the
    /// next call, and every call after). An error is for good.
    fn next(&mut self) -> anyhow::Result<Next> {
        if let Some(failed) = &self.failed {
            bail!("{failed}");
        }
        if self.pending == 0 {
            return Ok(Next::End);
        }
        let pos = Position { line: self.line, byte: self.byte, record: self.next_record };
        let raw = {
            let content = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            raw_text(content.strip_suffix(b"\r").unwrap_or(content))
        };
        let next = match self.fields() {
            Ok(fields) => Next::Record(SourceRecord { pos, fields, raw }),
            Err(reason) => Next::Bad { pos, reason, raw },
        };
        self.byte += self.pending as u64;
        self.line += 1;
        self.next_record += 1;
        if let Err(e) = self.advance() {
            self.failed = Some(format!("{e:#}"));
        }
        Ok(next)
    }

    /// The fields of the line in `buf`, or why it is not a record.
    fn fields(&self) -> Result<Vec<Field>, String> {
        let text = std::str::from_utf8(&self.buf).map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
        let object = parse_object(text)?;
        let mut fields = vec![None; self.columns.len()];
        for (key, value) in object.0 {
            let i = *self.index.get(&key).ok_or_else(|| format!("unknown column {key:?}"))?;
            if fields[i].is_some() {
                return Err(format!("column {key:?} appears twice"));
            }
            fields[i] = Some(json_field(value).map_err(|e| format!("column {key:?}: {e}"))?);
        }
        Ok(fields.into_iter().map(|f| f.unwrap_or(Field::Null)).collect())
    }
}

/// Sample values of one column, for `kho load --infer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSample {
    pub name: String,
    /// The non-NULL values as text (lossy UTF-8), in record order.
    pub values: Vec<String>,
    pub nulls: u64,
    /// How many of `values` came as JSON objects or arrays.
    pub json_values: u64,
}

/// The columns of a source with the values of its first `records_max` good records (a bad
/// record is passed over).
pub fn sample_columns(source: &mut FileSource, records_max: usize) -> anyhow::Result<Vec<ColumnSample>> {
    let mut samples: Vec<ColumnSample> =
        source.columns().iter().map(|name| ColumnSample { name: name.clone(), values: Vec::new(), nulls: 0, json_values: 0 }).collect();
    let mut records = 0;
    while records < records_max {
        match source.next()? {
            Next::End => break,
            Next::Bad { .. } => continue,
            Next::Record(r) => {
                records += 1;
                for (sample, field) in samples.iter_mut().zip(r.fields) {
                    match field {
                        Field::Null => sample.nulls += 1,
                        Field::Json(j) => {
                            sample.json_values += 1;
                            sample.values.push(j);
                        }
                        Field::Raw(b) => sample.values.push(String::from_utf8_lossy(&b).into_owned()),
                        other => unreachable!("a file source yields only Null, Raw and Json fields, not {other:?}"),
                    }
                }
            }
        }
    }
    Ok(samples)
}

/// A type for each sampled column: json if every value is a JSON object or array, else
/// `infer_type_from_samples`. A proposal for the user to edit.
pub fn propose_types(samples: &[ColumnSample]) -> Vec<(String, ColType)> {
    samples
        .iter()
        .map(|s| {
            let ty = if s.json_values > 0 && s.json_values as usize == s.values.len() {
                ColType::Json
            } else {
                infer_type_from_samples(&s.values.iter().map(String::as_str).collect::<Vec<_>>())
            };
            (s.name.clone(), ty)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn raw(s: &str) -> Field {
        Field::Raw(s.as_bytes().to_vec())
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let bytes = match Compression::of(&path) {
            Compression::None => content.to_vec(),
            Compression::Gzip => {
                // Two gzip members: a reader that stops after the first loses the rest.
                let (a, b) = content.split_at(content.len() / 2);
                let mut out = Vec::new();
                for part in [a, b] {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    e.write_all(part).unwrap();
                    out.extend(e.finish().unwrap());
                }
                out
            }
            Compression::Zstd => zstd::stream::encode_all(content, 3).unwrap(),
        };
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Every item until the end, each with the position the source reported before it.
    fn read_all(source: &mut FileSource) -> Vec<(Position, Next)> {
        let mut items = Vec::new();
        loop {
            let before = source.position();
            let next = source.next().unwrap();
            if next == Next::End {
                return items;
            }
            items.push((before, next));
        }
    }

    fn pos_of(n: &Next) -> &Position {
        match n {
            Next::Record(r) => &r.pos,
            Next::Bad { pos, .. } => pos,
            Next::End => panic!("no position at the end"),
        }
    }

    fn records(items: &[(Position, Next)]) -> Vec<SourceRecord> {
        items
            .iter()
            .filter_map(|(_, n)| match n {
                Next::Record(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn csv(path: &Path) -> FileSource {
        open_csv(path, &CsvOptions::default(), None).unwrap()
    }

    #[test]
    fn csv_quotes_embedded_newlines_bom_and_crlf_with_exact_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{FEFF}id,name,note\r\n\
                    1,\"Trần, Văn A\",plain\r\n\
                    \r\n\
                    2,\"say \"\"hi\"\"\",\"two\r\nlines\nthree\"\r\n\
                    3,,x\n\
                    \n\n\
                    4,last,no newline at the end";
        let path = write(dir.path(), "people.csv", text.as_bytes());
        let mut s = csv(&path);
        assert_eq!(s.columns(), ["id", "name", "note"], "the BOM is not part of the first column's name");
        let items = read_all(&mut s);
        let r = records(&items);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].fields, vec![raw("1"), raw("Trần, Văn A"), raw("plain")]);
        assert_eq!(r[1].fields, vec![raw("2"), raw("say \"hi\""), raw("two\r\nlines\nthree")]);
        assert_eq!(r[2].fields, vec![raw("3"), Field::Null, raw("x")], "the empty field is NULL");
        assert_eq!(r[3].fields, vec![raw("4"), raw("last"), raw("no newline at the end")]);
        // Lines where each record starts: the header is line 1, a blank line is line 3.
        assert_eq!(r.iter().map(|r| r.pos.line).collect::<Vec<_>>(), vec![2, 4, 7, 10]);
        assert_eq!(r.iter().map(|r| r.pos.record).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        // Bytes: each record's first byte.
        for r in &r {
            let first = r.pos.byte as usize;
            assert_eq!(&text.as_bytes()[first..first + 2], format!("{},", r.pos.record + 1).as_bytes(), "{r:?}");
        }
        assert_eq!(r[1].raw, "2,\"say \"\"hi\"\"\",\"two\r\nlines\nthree\"");
        // At the end, the position is the end of the stream.
        assert_eq!(s.position(), Position { line: 10, byte: text.len() as u64, record: 4 });
    }

    #[test]
    fn csv_wrong_field_counts_are_bad_records_and_the_read_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.csv", b"a,b\n1,2\n1,2,3\n1\n3,4\n");
        let items = read_all(&mut csv(&path));
        let kinds: Vec<String> = items
            .iter()
            .map(|(_, n)| match n {
                Next::Record(r) => format!("ok line {}", r.pos.line),
                Next::Bad { pos, reason, raw } => format!("bad line {} record {}: {reason} [{raw}]", pos.line, pos.record),
                Next::End => unreachable!(),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "ok line 2",
                "bad line 3 record 1: record has 3 fields, the header has 2 [1,2,3]",
                "bad line 4 record 2: record has 1 fields, the header has 2 [1]",
                "ok line 5",
            ]
        );
    }

    #[test]
    fn csv_options_delimiter_null_text_and_no_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.tsv", b"1\t\\N\t\n2\tx\t\\N\n");
        let opts = CsvOptions {
            delimiter: b'\t',
            has_header: false,
            null: Some("\\N".into()),
            columns: Some(vec!["id".into(), "a".into(), "b".into()]),
        };
        let mut s = open_csv(&path, &opts, None).unwrap();
        assert_eq!(s.columns(), ["id", "a", "b"]);
        let r = records(&read_all(&mut s));
        assert_eq!(r[0].fields, vec![raw("1"), Field::Null, raw("")], "with a null text, the empty field is empty text");
        assert_eq!(r[0].pos, Position { line: 1, byte: 0, record: 0 });
        assert_eq!(r[1].fields, vec![raw("2"), raw("x"), Field::Null]);

        let no_names = CsvOptions { has_header: false, ..CsvOptions::default() };
        assert!(format!("{:#}", open_csv(&path, &no_names, None).err().unwrap()).contains("needs its column names"));
        let both = CsvOptions { columns: Some(vec!["x".into()]), ..CsvOptions::default() };
        assert!(format!("{:#}", open_csv(&path, &both, None).err().unwrap()).contains("given for a file with a header"));
        let empty = write(dir.path(), "empty.csv", b"");
        assert!(format!("{:#}", open_csv(&empty, &CsvOptions::default(), None).err().unwrap()).contains("empty: no header"));
    }

    #[test]
    fn csv_invalid_utf8_stays_in_the_field_for_the_encoder_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.csv", b"a\nab\xFFc\n");
        let r = records(&read_all(&mut csv(&path)));
        assert_eq!(r[0].fields, vec![Field::Raw(b"ab\xFFc".to_vec())]);
        assert_eq!(r[0].raw, "ab\u{FFFD}c");
        let bad_header = write(dir.path(), "b.csv", b"a,\xFF\n1,2\n");
        let e = format!("{:#}", open_csv(&bad_header, &CsvOptions::default(), None).err().unwrap());
        assert!(e.contains("header column 2: invalid UTF-8 at byte 0"), "{e}");
    }

    #[test]
    fn a_csv_record_over_the_bound_stops_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = b"a\n\"unclosed\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 100_000));
        let path = write(dir.path(), "a.csv", &text);
        let mut s = open_csv_bounded(&path, &CsvOptions::default(), None, 10_000).unwrap();
        let e = format!("{:#}", s.next().unwrap_err());
        assert!(e.contains("the record at line 2 is longer than 10000 bytes (an unclosed quote?)"), "{e}");
    }

    #[test]
    fn jsonl_columns_in_written_order_and_each_kind_of_value() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"zeta\": 1, \"alpha\": \"Hà Nội\", \"mid\": null}\r\n\
                    \n   \n\
                    {\"alpha\": \"a\\\"b\\u00e9\", \"zeta\": 12345678901234567890.1234567890, \"mid\": true}\n\
                    {\"mid\": { \"y\" : [1, 2.50, \"a b\"], \"x\": {} }}\n\
                    {\"zeta\": -0.0e1, \"mid\": false}";
        let path = write(dir.path(), "a.jsonl", text.as_bytes());
        let mut s = open_jsonl(&path, None, None).unwrap();
        assert_eq!(s.columns(), ["zeta", "alpha", "mid"], "the first object's keys, in the order written");
        let r = records(&read_all(&mut s));
        assert_eq!(r[0].fields, vec![raw("1"), raw("Hà Nội"), Field::Null]);
        assert_eq!(r[1].fields, vec![raw("12345678901234567890.1234567890"), raw("a\"bé"), raw("true")], "digits as written");
        assert_eq!(r[2].fields, vec![Field::Null, Field::Null, Field::Json("{\"y\":[1,2.50,\"a b\"],\"x\":{}}".into())]);
        assert_eq!(r[3].fields, vec![raw("-0.0e1"), Field::Null, raw("false")]);
        assert_eq!(r.iter().map(|r| r.pos.line).collect::<Vec<_>>(), vec![1, 4, 5, 6]);
        assert_eq!(r.iter().map(|r| r.pos.record).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(r[0].raw, "{\"zeta\": 1, \"alpha\": \"Hà Nội\", \"mid\": null}", "no line end in raw");
    }

    #[test]
    fn jsonl_bad_lines_are_bad_records_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"a\": 1, \"b\": 2}\n\
                    [1, 2]\n\
                    {\"a\": 1,\n\
                    {\"a\": 1, \"c\": 3}\n\
                    {\"a\": 1, \"a\": 2}\n\
                    {\"a\": 1} trailing\n\
                    {\"b\": \"\\ud800\"}\n\
                    {\"b\": 5}\n";
        let path = write(dir.path(), "a.jsonl", text.as_bytes());
        let items = read_all(&mut open_jsonl(&path, None, None).unwrap());
        let got: Vec<String> = items
            .iter()
            .map(|(_, n)| match n {
                Next::Record(r) => format!("{} ok", r.pos.line),
                Next::Bad { pos, reason, .. } => format!("{} {reason}", pos.line),
                Next::End => unreachable!(),
            })
            .collect();
        assert_eq!(got[0], "1 ok");
        assert!(got[1].starts_with("2 not a JSON object: invalid type: sequence, expected a JSON object"), "{}", got[1]);
        assert!(got[2].starts_with("3 not a JSON object: EOF while parsing"), "{}", got[2]);
        assert_eq!(got[3], "4 unknown column \"c\"");
        assert_eq!(got[4], "5 column \"a\" appears twice");
        assert!(got[5].starts_with("6 not a JSON object: trailing characters"), "{}", got[5]);
        assert_eq!(got[6], "7 column \"b\": unexpected end of hex escape (at column 8)");
        assert_eq!(got[7], "8 ok");
        assert_eq!(items.len(), 8);
    }

    #[test]
    fn jsonl_given_columns_missing_first_object_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.jsonl", b"{\"b\": 2}\n{\"a\": 1}\n");
        let mut s = open_jsonl(&path, Some(vec!["a".into(), "b".into()]), None).unwrap();
        let r = records(&read_all(&mut s));
        assert_eq!(r[0].fields, vec![Field::Null, raw("2")], "an absent key is NULL");
        assert_eq!(r[1].fields, vec![raw("1"), Field::Null]);

        let empty = write(dir.path(), "e.jsonl", b"\n\n");
        assert!(format!("{:#}", open_jsonl(&empty, None, None).err().unwrap()).contains("no JSON object"));
        let first_bad = write(dir.path(), "f.jsonl", b"\n[1]\n");
        let e = format!("{:#}", open_jsonl(&first_bad, None, None).err().unwrap());
        assert!(e.contains("line 2: not a JSON object") && e.contains("give them instead"), "{e}");

        let long =
            write(dir.path(), "l.jsonl", format!("{{\"a\":\"{}\"}}\r\n{{\"a\":\"{}\"}}\n", "x".repeat(92), "x".repeat(93)).as_bytes());
        let mut s = open_jsonl_bounded(&long, None, None, 100).unwrap();
        assert!(matches!(s.next().unwrap(), Next::Record(_)), "a line of exactly the bound is read");
        let e = format!("{:#}", s.next().unwrap_err());
        assert!(e.contains("line 2 is longer than 100 bytes"), "{e}");
        assert_eq!(s.position().line, 2, "a checkpoint would resume at the long line");
        let again = format!("{:#}", s.next().unwrap_err());
        assert_eq!(again, e, "the error is for good, not an end");
    }

    /// Reads a file fully; then for every record k, opens it again at record k's position
    /// and checks the rest is exactly records k.. (positions included).
    fn check_resume(open: &dyn Fn(Option<&Position>) -> FileSource, what: &str) {
        let all = read_all(&mut open(None));
        assert!(all.len() >= 5, "{what}: {all:?}");
        assert!(all.iter().any(|(_, n)| matches!(n, Next::Bad { .. })), "{what}: a bad record is among them");
        for (before, n) in &all {
            assert_eq!(before, pos_of(n), "{what}: position() before a record is where it starts");
        }
        for k in 0..=all.len() {
            let at = match all.get(k) {
                Some((_, n)) => pos_of(n).clone(),
                None => {
                    let mut s = open(None);
                    while s.next().unwrap() != Next::End {}
                    s.position()
                }
            };
            let rest = read_all(&mut open(Some(&at)));
            assert_eq!(rest, all[k..], "{what}: resumed at record {k} ({at:?})");
        }
    }

    #[test]
    fn resuming_at_any_record_continues_exactly_plain_gz_and_zst() {
        let dir = tempfile::tempdir().unwrap();
        let csv_text = "\u{FEFF}id,text\r\n1,\"a\r\nb\"\r\n\r\n2,plain\r\n3,\"x,\ny\"\n4\n5,\"\"\"q\"\"\"\n\n6,end";
        let jsonl_text = "\u{FEFF}{\"id\": 1, \"t\": \"a\\nb\"}\r\n\r\n{\"id\": 2, \"t\": {\"x\": [1,\n2]}}\n{\"id\": 3}\n\n{\"id\": 4, \"t\": null}\n{\"id\": 5}";
        for ext in ["", ".gz", ".zst"] {
            let csv_path = write(dir.path(), &format!("r.csv{ext}"), csv_text.as_bytes());
            check_resume(&|at| open_csv(&csv_path, &CsvOptions::default(), at).unwrap(), &format!("csv{ext}"));
            let jsonl_path = write(dir.path(), &format!("r.jsonl{ext}"), jsonl_text.as_bytes());
            check_resume(&|at| open_jsonl(&jsonl_path, None, at).unwrap(), &format!("jsonl{ext}"));
        }
        // The compressed files read as the plain one.
        let plain = read_all(&mut open_csv(&dir.path().join("r.csv"), &CsvOptions::default(), None).unwrap());
        let gz = read_all(&mut open_csv(&dir.path().join("r.csv.gz"), &CsvOptions::default(), None).unwrap());
        assert_eq!(plain, gz);
        assert_eq!(records(&plain).len(), 5);
    }

    #[test]
    fn a_checkpoint_past_the_end_of_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.csv", "a.csv.gz", "a.csv.zst"] {
            let path = write(dir.path(), name, b"a\n1\n");
            let at = Position { line: 9, byte: 100, record: 8 };
            let e = format!("{:#}", open_csv(&path, &CsvOptions::default(), Some(&at)).err().unwrap());
            assert!(e.contains("the checkpoint is at byte 100") && e.contains("was it replaced?"), "{name}: {e}");
        }
        let path = write(dir.path(), "h.csv", b"a,b\n1,2\n");
        let at = Position { line: 1, byte: 0, record: 0 };
        let e = format!("{:#}", open_csv(&path, &CsvOptions::default(), Some(&at)).err().unwrap());
        assert!(e.contains("before the first record (byte 4)"), "{e}");
    }

    #[test]
    fn a_corrupt_compressed_file_is_an_error_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.csv.gz", b"a\n1\n2\n");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&path, bytes).unwrap();
        let result = open_csv(&path, &CsvOptions::default(), None).and_then(|mut s| loop {
            if s.next()? == Next::End {
                return Ok(());
            }
        });
        assert!(result.is_err());
    }

    #[test]
    fn raw_text_is_bounded() {
        assert_eq!(raw_text(b"abc"), "abc");
        let long = "é".repeat(600);
        let r = raw_text(long.as_bytes());
        assert!(r.len() <= RAW_BYTES_MAX + '…'.len_utf8() && r.ends_with('…'), "{}", r.len());
    }

    #[test]
    fn samples_propose_types_per_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.jsonl",
            b"{\"id\": 1, \"ok\": true, \"born\": \"2020-01-02\", \"doc\": {\"a\": 1}, \"name\": \"x\"}\n\
              not json\n\
              {\"id\": 2, \"ok\": false, \"born\": null, \"doc\": [], \"name\": \"7\"}\n\
              {\"id\": \"x\", \"ok\": \"x\", \"born\": \"x\", \"doc\": \"x\", \"name\": \"x\"}\n",
        );
        let mut s = open_jsonl(&path, None, None).unwrap();
        let samples = sample_columns(&mut s, 2).unwrap();
        assert_eq!(samples[2], ColumnSample { name: "born".into(), values: vec!["2020-01-02".into()], nulls: 1, json_values: 0 });
        assert_eq!(
            propose_types(&samples),
            vec![
                ("id".to_string(), ColType::Integer),
                ("ok".to_string(), ColType::Boolean),
                ("born".to_string(), ColType::Date),
                ("doc".to_string(), ColType::Json),
                ("name".to_string(), ColType::Text),
            ]
        );
    }
}
