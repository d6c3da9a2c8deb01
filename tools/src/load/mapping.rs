//! How the columns of a source file become a row: the mapping file of `kho load`.
//!
//! A mapping (TOML, format version 1) names the source columns of the row key, in order,
//! and for every source column its type and the cell it is stored in (`family:qualifier`),
//! or that it is read and ignored on purpose (`skip = true`):
//!
//! ```toml
//! version = 1
//! key = ["province", "citizen_id"]
//!
//! [[column]]
//! name = "province"
//! type = "integer"          # no `cell`: a key-only column
//!
//! [[column]]
//! name = "citizen_id"
//! type = "text"
//! cell = "person:citizen_id"
//!
//! [[column]]
//! name = "old_notes"
//! skip = true
//! ```
//!
//! Nothing is dropped silently: [`Mapping::bind`] refuses a source column the mapping does
//! not name. The byte encoding of each type is in `encode.rs`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use super::encode::QUALIFIER_BYTES_MAX_DEFAULT;

/// The one mapping format this `kho` reads and writes.
pub const MAPPING_VERSION: u32 = 1;

/// Source columns named in one error message, at most (a wide table has hundreds).
const COLUMNS_IN_MESSAGE_MAX: usize = 40;

/// The type of a source column: how its values are checked and encoded (`encode.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColType {
    Text,
    Integer,
    Decimal,
    Boolean,
    Date,
    Timestamptz,
    Bytes,
    Json,
}

impl ColType {
    pub const ALL: [ColType; 8] = [
        ColType::Text,
        ColType::Integer,
        ColType::Decimal,
        ColType::Boolean,
        ColType::Date,
        ColType::Timestamptz,
        ColType::Bytes,
        ColType::Json,
    ];

    /// The name in a mapping file.
    pub fn name(self) -> &'static str {
        match self {
            ColType::Text => "text",
            ColType::Integer => "integer",
            ColType::Decimal => "decimal",
            ColType::Boolean => "boolean",
            ColType::Date => "date",
            ColType::Timestamptz => "timestamptz",
            ColType::Bytes => "bytes",
            ColType::Json => "json",
        }
    }

    /// Why a column of this type cannot be part of the row key, if it cannot.
    pub fn key_refusal(self) -> Option<&'static str> {
        match self {
            ColType::Json => Some("a row key cannot be json"),
            ColType::Decimal => {
                Some("a row key cannot be decimal (its stored text does not sort in numeric order): load it as text (type = \"text\")")
            }
            _ => None,
        }
    }
}

impl fmt::Display for ColType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One source column of a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    /// The column's name in the source (CSV header, JSON key, PostgreSQL column).
    pub name: String,
    pub ty: ColType,
    /// The cell it is stored in: (family, qualifier). `None` for a key-only column.
    pub cell: Option<(String, String)>,
    /// Read and ignored on purpose: neither key nor cell.
    pub skip: bool,
}

/// Which source columns make the row key, and where every other column goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The row key: these columns, in this order (`encode::encode_key`).
    pub key: Vec<String>,
    pub columns: Vec<ColumnMap>,
}

/// The mapping file as written (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    version: u32,
    key: Vec<String>,
    #[serde(default)]
    column: Vec<ColumnFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    #[serde(rename = "type")]
    ty: Option<ColType>,
    cell: Option<String>,
    #[serde(default)]
    skip: bool,
}

/// What to do with one column of the source, by its index in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnAction {
    /// Read and ignored (`skip = true`).
    Skip,
    /// Checked as `ty`; stored in `cell` if it has one (a key column may have none).
    Use { ty: ColType, cell: Option<(String, String)> },
}

/// A mapping resolved against the columns of one source: what to do with each field of a
/// record, by index (`encode::map_record`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The source's columns, in its order.
    pub columns: Vec<String>,
    /// One action per source column, same order as `columns`.
    pub actions: Vec<ColumnAction>,
    /// The source indexes of the key columns, in key order.
    pub key: Vec<usize>,
}

impl Bound {
    /// The type of the source column at `index`, unless it is skipped.
    pub fn type_of(&self, index: usize) -> Option<ColType> {
        match &self.actions[index] {
            ColumnAction::Skip => None,
            ColumnAction::Use { ty, .. } => Some(*ty),
        }
    }
}

/// Checks a family name by the nodes' rule (`kho_raft::catalog::check_name`).
fn check_family(family: &str) -> Result<(), String> {
    kho_raft::catalog::check_name("family", family).map_err(|e| e.to_string())
}

/// Splits `family:qualifier` at the first `:` (the qualifier may hold more).
fn parse_cell(column: &str, cell: &str) -> anyhow::Result<(String, String)> {
    let (family, qualifier) =
        cell.split_once(':').ok_or_else(|| anyhow!("column {column:?}: cell {cell:?} is not family:qualifier (no `:`)"))?;
    Ok((family.to_string(), qualifier.to_string()))
}

/// A list of names for a message, bounded.
fn name_list(names: &[String]) -> String {
    let mut s = names.iter().take(COLUMNS_IN_MESSAGE_MAX).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    if names.len() > COLUMNS_IN_MESSAGE_MAX {
        s.push_str(&format!(" and {} more", names.len() - COLUMNS_IN_MESSAGE_MAX));
    }
    s
}

/// A TOML string literal (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Mapping {
    /// Reads a mapping file and checks it; an error names the column and the problem.
    pub fn parse_toml(text: &str) -> anyhow::Result<Mapping> {
        let file: MappingFile = toml::from_str(text).context("mapping file")?;
        if file.version != MAPPING_VERSION {
            bail!("mapping version {} is not supported: this kho reads version {MAPPING_VERSION}", file.version);
        }
        let mut columns = Vec::with_capacity(file.column.len());
        for c in file.column {
            if c.skip && c.cell.is_some() {
                bail!("column {:?}: skip = true and a cell: a skipped column is not stored, remove one of them", c.name);
            }
            let ty = match (c.ty, c.skip) {
                (Some(ty), _) => ty,
                (None, true) => ColType::Text,
                (None, false) => bail!(
                    "column {:?} has no type: add type = one of {}",
                    c.name,
                    ColType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                ),
            };
            let cell = c.cell.as_deref().map(|cell| parse_cell(&c.name, cell)).transpose()?;
            columns.push(ColumnMap { name: c.name, ty, cell, skip: c.skip });
        }
        let m = Mapping { key: file.key, columns };
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules of a mapping (see the module doc); `parse_toml`, `simple` and
    /// `infer` all end here.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.key.is_empty() {
            bail!("key is empty: name the source column(s) of the row key, e.g. key = [\"id\"]");
        }
        let mut by_name: HashMap<&str, &ColumnMap> = HashMap::new();
        let mut cells: HashMap<(&str, &str), &str> = HashMap::new();
        for c in &self.columns {
            if c.name.is_empty() {
                bail!("a column has an empty name");
            }
            if by_name.insert(&c.name, c).is_some() {
                bail!("column {:?} is declared twice", c.name);
            }
            if let Some((family, qualifier)) = &c.cell {
                check_family(family).map_err(|e| anyhow!("column {:?}: cell family: {e}", c.name))?;
                if qualifier.is_empty() {
                    bail!("column {:?}: the qualifier of cell \"{family}:\" is empty", c.name);
                }
                if qualifier.len() > QUALIFIER_BYTES_MAX_DEFAULT {
                    bail!(
                        "column {:?}: the qualifier is {} bytes, more than the limit of {QUALIFIER_BYTES_MAX_DEFAULT} bytes",
                        c.name,
                        qualifier.len()
                    );
                }
                if let Some(other) = cells.insert((family, qualifier), &c.name) {
                    bail!("columns {other:?} and {:?} both go to cell \"{family}:{qualifier}\"", c.name);
                }
            }
        }
        let mut key_seen = HashSet::new();
        for k in &self.key {
            if !key_seen.insert(k.as_str()) {
                bail!("key column {k:?} is listed twice in key");
            }
            let c = by_name
                .get(k.as_str())
                .ok_or_else(|| anyhow!("key column {k:?} is not declared: add a [[column]] with name = {k:?} and its type"))?;
            if c.skip {
                bail!("key column {k:?} has skip = true: a key column is read");
            }
            if let Some(why) = c.ty.key_refusal() {
                bail!("key column {k:?} has type {}: {why}", c.ty);
            }
        }
        for c in &self.columns {
            if !c.skip && c.cell.is_none() && !key_seen.contains(c.name.as_str()) {
                bail!("column {:?} has no cell: give it one (cell = \"family:qualifier\"), or add skip = true to ignore it", c.name);
            }
        }
        Ok(())
    }

    /// The mapping as a mapping file, with comments; `parse_toml` reads it back equal.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        s.push_str("# kho load mapping: which source column becomes which cell (docs/MIGRATION.md).\n");
        s.push_str(&format!("version = {MAPPING_VERSION}\n"));
        s.push_str("# The row key: these source columns, in this order.\n");
        s.push_str(&format!("key = [{}]\n", self.key.iter().map(|k| toml_str(k)).collect::<Vec<_>>().join(", ")));
        s.push_str(&format!(
            "\n# Each source column: type = {}; cell = \"family:qualifier\" stores it;\n\
             # a key column without a cell is key-only; skip = true reads and ignores it.\n",
            ColType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(" | ")
        ));
        for c in &self.columns {
            s.push_str("\n[[column]]\n");
            s.push_str(&format!("name = {}\n", toml_str(&c.name)));
            if !c.skip || c.ty != ColType::Text {
                s.push_str(&format!("type = \"{}\"\n", c.ty));
            }
            if let Some((family, qualifier)) = &c.cell {
                s.push_str(&format!("cell = {}\n", toml_str(&format!("{family}:{qualifier}"))));
            }
            if c.skip {
                s.push_str("skip = true\n");
            } else if c.cell.is_none() {
                s.push_str("# key-only: not stored as a cell\n");
            }
        }
        s
    }

    /// The flags case, `--key COL[,COL…] --family F`: the key columns are text and
    /// key-only; every other column is text in cell `F:<column name>`.
    pub fn simple(columns: &[String], key: &[String], family: &str) -> anyhow::Result<Mapping> {
        let typed: Vec<(String, ColType)> = columns.iter().map(|c| (c.clone(), ColType::Text)).collect();
        Mapping::infer(&typed, key, family)
    }

    /// A full mapping from typed columns (PostgreSQL's schema, or types proposed from a
    /// sample: [`infer_type_from_samples`]): the key columns key-only with their type, every
    /// other column in `family:<name>` with its type. A decimal key column becomes text (a
    /// decimal cannot be a key); a json key column is an error. A proposal: the user edits it.
    pub fn infer(columns: &[(String, ColType)], key: &[String], family: &str) -> anyhow::Result<Mapping> {
        check_family(family).map_err(|e| anyhow!("--family: {e}"))?;
        for k in key {
            if !columns.iter().any(|(name, _)| name == k) {
                let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
                bail!("key column {k:?} is not a column of the source (its columns: {})", name_list(&names));
            }
        }
        let columns = columns
            .iter()
            .map(|(name, ty)| {
                if key.contains(name) {
                    let ty = if *ty == ColType::Decimal { ColType::Text } else { *ty };
                    ColumnMap { name: name.clone(), ty, cell: None, skip: false }
                } else {
                    ColumnMap { name: name.clone(), ty: *ty, cell: Some((family.to_string(), name.clone())), skip: false }
                }
            })
            .collect();
        let m = Mapping { key: key.to_vec(), columns };
        m.validate()?;
        Ok(m)
    }

    /// Resolves the mapping against a source's actual columns. Every mapped column must be
    /// in the source (a skipped one may be absent), and every source column must be in the
    /// mapping: nothing is dropped silently.
    pub fn bind(&self, source_columns: &[String]) -> anyhow::Result<Bound> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, name) in source_columns.iter().enumerate() {
            if let Some(first) = index.insert(name, i) {
                bail!("the source has two columns named {name:?} (columns {} and {})", first + 1, i + 1);
            }
        }
        let mut actions = vec![None; source_columns.len()];
        for c in &self.columns {
            match index.get(c.name.as_str()) {
                Some(&i) => {
                    actions[i] = Some(if c.skip { ColumnAction::Skip } else { ColumnAction::Use { ty: c.ty, cell: c.cell.clone() } });
                }
                None if c.skip => {}
                None => bail!("mapped column {:?} is not in the source (its columns: {})", c.name, name_list(source_columns)),
            }
        }
        let unmapped: Vec<String> =
            source_columns.iter().zip(&actions).filter(|(_, a)| a.is_none()).map(|(name, _)| name.clone()).collect();
        match unmapped.len() {
            0 => {}
            1 => bail!(
                "source column {} is not in the mapping: give it a [[column]] with a cell, or add it with `skip = true` to ignore it",
                name_list(&unmapped)
            ),
            _ => bail!(
                "source columns {} are not in the mapping: give each a [[column]] with a cell, or add it with `skip = true` to ignore it",
                name_list(&unmapped)
            ),
        }
        // Every key column is declared and not skipped (validate), and in the source (above).
        let key = self.key.iter().map(|k| index[k.as_str()]).collect();
        Ok(Bound { columns: source_columns.to_vec(), actions: actions.into_iter().map(|a| a.expect("checked above")).collect(), key })
    }
}

/// Proposes a type from sample text values of a column (CSV, JSON Lines): integer if every
/// non-empty sample is an integer (i64), boolean if every one is true or false (any case),
/// date if every one is `YYYY-MM-DD`, timestamptz if every one is a timestamp with a time
/// zone (RFC 3339, or PostgreSQL's text form), else text. Never decimal: a proposal, the
/// user edits it. No non-empty sample: text.
pub fn infer_type_from_samples(values: &[&str]) -> ColType {
    use super::encode::{parse_date, parse_integer, parse_timestamptz};
    let samples: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
    if samples.is_empty() {
        return ColType::Text;
    }
    // An integer only when storing it as one loses nothing: `007` and `+7` are ids or codes
    // whose text matters (a citizen id keeps its leading zeros).
    let canonical_integer = |v: &str| parse_integer(v).is_ok_and(|n| n.to_string() == v);
    if samples.iter().all(|v| canonical_integer(v)) {
        ColType::Integer
    } else if samples.iter().all(|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")) {
        ColType::Boolean
    } else if samples.iter().all(|v| parse_date(v).is_ok()) {
        ColType::Date
    } else if samples.iter().all(|v| parse_timestamptz(v).is_ok()) {
        ColType::Timestamptz
    } else {
        ColType::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version = 1
# The row key: these source columns, in this order.
key = ["province", "citizen_id"]

[[column]]
name = "province"
type = "integer"

[[column]]
name = "citizen_id"
type = "text"
cell = "person:citizen_id"

[[column]]
name = "full_name"
type = "text"
cell = "person:full_name"

[[column]]
name = "old_notes"
skip = true
"#;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn err(text: &str) -> String {
        format!("{:#}", Mapping::parse_toml(text).unwrap_err())
    }

    /// A mapping file with the given key line and columns.
    fn with_columns(key: &str, columns: &str) -> String {
        format!("version = 1\nkey = {key}\n{columns}")
    }

    #[test]
    fn numbers_with_leading_zeros_are_proposed_as_text() {
        assert_eq!(infer_type_from_samples(&["000000000001", "123"]), ColType::Text);
        assert_eq!(infer_type_from_samples(&["+5"]), ColType::Text);
        assert_eq!(infer_type_from_samples(&["0", "-12", "40"]), ColType::Integer);
    }

    #[test]
    fn the_documented_example_parses() {
        let m = Mapping::parse_toml(EXAMPLE).unwrap();
        assert_eq!(m.key, strings(&["province", "citizen_id"]));
        assert_eq!(
            m.columns,
            vec![
                ColumnMap { name: "province".into(), ty: ColType::Integer, cell: None, skip: false },
                ColumnMap { name: "citizen_id".into(), ty: ColType::Text, cell: Some(("person".into(), "citizen_id".into())), skip: false },
                ColumnMap { name: "full_name".into(), ty: ColType::Text, cell: Some(("person".into(), "full_name".into())), skip: false },
                ColumnMap { name: "old_notes".into(), ty: ColType::Text, cell: None, skip: true },
            ]
        );
    }

    #[test]
    fn every_type_name_parses_and_displays_the_same() {
        for ty in ColType::ALL {
            let text = with_columns(
                "[\"k\"]",
                &format!("[[column]]\nname = \"k\"\ntype = \"text\"\n[[column]]\nname = \"c\"\ntype = \"{ty}\"\ncell = \"f:c\"\n"),
            );
            let m = Mapping::parse_toml(&text).unwrap();
            assert_eq!(m.columns[1].ty, ty);
            assert_eq!(ty.to_string(), ty.name());
        }
        let bad = with_columns("[\"k\"]", "[[column]]\nname = \"k\"\ntype = \"int\"\n");
        let e = err(&bad);
        assert!(e.contains("unknown variant `int`") && e.contains("integer"), "{e}");
    }

    #[test]
    fn a_qualifier_may_hold_a_colon() {
        let text = with_columns("[\"k\"]", "[[column]]\nname = \"k\"\ntype = \"text\"\ncell = \"f:a:b\"\n");
        assert_eq!(Mapping::parse_toml(&text).unwrap().columns[0].cell, Some(("f".into(), "a:b".into())));
    }

    #[test]
    fn invalid_mappings_are_refused_naming_the_column_and_the_problem() {
        let k = "[[column]]\nname = \"k\"\ntype = \"text\"\n";
        let cases: Vec<(String, &str)> = vec![
            ("version = 2\nkey = [\"k\"]\n".to_string() + k, "mapping version 2 is not supported"),
            ("key = [\"k\"]\n".to_string() + k, "missing field `version`"),
            (with_columns("[\"k\"]", &format!("{k}extra = 1\n")), "unknown field `extra`"),
            (with_columns("[\"k\"]", &format!("color = 1\n{k}")), "unknown field `color`"),
            (with_columns("[]", k), "key is empty"),
            (with_columns("[\"k\", \"k\"]", k), "key column \"k\" is listed twice"),
            (with_columns("[\"id\"]", k), "key column \"id\" is not declared"),
            (with_columns("[\"k\"]", "[[column]]\nname = \"k\"\nskip = true\n"), "key column \"k\" has skip = true"),
            (with_columns("[\"k\"]", &format!("{k}{k}")), "column \"k\" is declared twice"),
            (
                with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \"f:q\"\n[[column]]\nname = \"b\"\ntype = \"text\"\ncell = \"f:q\"\n")),
                "columns \"a\" and \"b\" both go to cell \"f:q\"",
            ),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \"fq\"\n")), "column \"a\": cell \"fq\" is not family:qualifier"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \":q\"\n")), "column \"a\": cell family"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \"Person:q\"\n")), "column \"a\": cell family"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \"f:\"\n")), "column \"a\": the qualifier of cell \"f:\" is empty"),
            (
                with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\ncell = \"f:{}\"\n", "q".repeat(4097))),
                "the qualifier is 4097 bytes, more than the limit of 4096 bytes",
            ),
            (with_columns("[\"k\"]", "[[column]]\nname = \"k\"\ntype = \"json\"\n"), "key column \"k\" has type json"),
            (with_columns("[\"k\"]", "[[column]]\nname = \"k\"\ntype = \"decimal\"\n"), "load it as text"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ntype = \"text\"\n")), "column \"a\" has no cell"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\ncell = \"f:a\"\n")), "column \"a\" has no type"),
            (with_columns("[\"k\"]", &format!("{k}[[column]]\nname = \"a\"\nskip = true\ncell = \"f:a\"\n")), "column \"a\": skip = true and a cell"),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "mapping:\n{text}\nerror: {e}\nwanted: {want}");
        }
    }

    #[test]
    fn to_toml_round_trips_with_every_kind_of_column() {
        let m = Mapping::parse_toml(EXAMPLE).unwrap();
        let text = m.to_toml();
        assert_eq!(Mapping::parse_toml(&text).unwrap(), m, "{text}");
        assert!(text.contains("# key-only"), "{text}");
        // Names that need quoting, a skipped column with a type, every type.
        let odd = Mapping {
            key: vec!["mã \"số\"".into(), "n".into()],
            columns: vec![
                ColumnMap { name: "mã \"số\"".into(), ty: ColType::Text, cell: Some(("p".into(), "mã:số\\x".into())), skip: false },
                ColumnMap { name: "n".into(), ty: ColType::Integer, cell: None, skip: false },
                ColumnMap { name: "old".into(), ty: ColType::Date, cell: None, skip: true },
            ]
            .into_iter()
            .chain(ColType::ALL.iter().map(|&ty| ColumnMap {
                name: format!("c_{ty}"),
                ty,
                cell: Some(("p".into(), format!("c_{ty}"))),
                skip: false,
            }))
            .collect(),
        };
        odd.validate().unwrap();
        let text = odd.to_toml();
        assert_eq!(Mapping::parse_toml(&text).unwrap(), odd, "{text}");
    }

    #[test]
    fn simple_makes_text_cells_in_one_family_and_a_key_only_key() {
        let m = Mapping::simple(&strings(&["id", "name", "city"]), &strings(&["id"]), "person").unwrap();
        assert_eq!(m.key, strings(&["id"]));
        assert_eq!(m.columns[0], ColumnMap { name: "id".into(), ty: ColType::Text, cell: None, skip: false });
        assert_eq!(m.columns[1].cell, Some(("person".into(), "name".into())));
        assert_eq!(m.columns[2].cell, Some(("person".into(), "city".into())));
        assert!(m.columns.iter().all(|c| c.ty == ColType::Text));

        let e = format!("{:#}", Mapping::simple(&strings(&["id", "name"]), &strings(&["ID"]), "person").unwrap_err());
        assert!(e.contains("key column \"ID\" is not a column of the source") && e.contains("\"id\", \"name\""), "{e}");
        let e = format!("{:#}", Mapping::simple(&strings(&["id"]), &strings(&["id"]), "Person").unwrap_err());
        assert!(e.contains("--family"), "{e}");
        let e = format!("{:#}", Mapping::simple(&strings(&["id"]), &[], "person").unwrap_err());
        assert!(e.contains("key is empty"), "{e}");
    }

    #[test]
    fn infer_keeps_the_types_and_makes_a_decimal_key_text() {
        let cols = vec![("id".to_string(), ColType::Decimal), ("born".to_string(), ColType::Date), ("doc".to_string(), ColType::Json)];
        let m = Mapping::infer(&cols, &strings(&["id"]), "p").unwrap();
        assert_eq!(m.columns[0], ColumnMap { name: "id".into(), ty: ColType::Text, cell: None, skip: false });
        assert_eq!(
            m.columns[1],
            ColumnMap { name: "born".into(), ty: ColType::Date, cell: Some(("p".into(), "born".into())), skip: false }
        );
        assert_eq!(m.columns[2].ty, ColType::Json);
        let e = format!("{:#}", Mapping::infer(&cols, &strings(&["doc"]), "p").unwrap_err());
        assert!(e.contains("key column \"doc\" has type json"), "{e}");
    }

    #[test]
    fn bind_resolves_by_name_in_source_order() {
        let m = Mapping::parse_toml(EXAMPLE).unwrap();
        let b = m.bind(&strings(&["full_name", "old_notes", "citizen_id", "province"])).unwrap();
        assert_eq!(b.key, vec![3, 2]);
        assert_eq!(b.actions[0], ColumnAction::Use { ty: ColType::Text, cell: Some(("person".into(), "full_name".into())) });
        assert_eq!(b.actions[1], ColumnAction::Skip);
        assert_eq!(b.actions[3], ColumnAction::Use { ty: ColType::Integer, cell: None });
        assert_eq!(b.type_of(1), None);
        // A skipped column may be absent from the source.
        let b = m.bind(&strings(&["province", "citizen_id", "full_name"])).unwrap();
        assert_eq!(b.key, vec![0, 1]);
    }

    #[test]
    fn bind_refuses_missing_unmapped_and_twice_named_columns() {
        let m = Mapping::parse_toml(EXAMPLE).unwrap();
        let e = format!("{:#}", m.bind(&strings(&["province", "citizen_id"])).unwrap_err());
        assert!(e.contains("mapped column \"full_name\" is not in the source") && e.contains("\"province\", \"citizen_id\""), "{e}");
        let e = format!("{:#}", m.bind(&strings(&["province", "citizen_id", "full_name", "phone"])).unwrap_err());
        assert!(e.contains("source column \"phone\" is not in the mapping") && e.contains("add it with `skip = true`"), "{e}");
        let e = format!("{:#}", m.bind(&strings(&["province", "citizen_id", "full_name", "phone", "email"])).unwrap_err());
        assert!(e.contains("source columns \"phone\", \"email\" are not in the mapping"), "{e}");
        let e = format!("{:#}", m.bind(&strings(&["province", "citizen_id", "full_name", "province"])).unwrap_err());
        assert!(e.contains("two columns named \"province\" (columns 1 and 4)"), "{e}");
    }

    #[test]
    fn types_are_proposed_from_samples() {
        assert_eq!(infer_type_from_samples(&["1", "-20", ""]), ColType::Integer);
        assert_eq!(infer_type_from_samples(&["1", "2.5"]), ColType::Text, "decimal is never proposed");
        assert_eq!(infer_type_from_samples(&["99999999999999999999"]), ColType::Text, "out of i64");
        assert_eq!(infer_type_from_samples(&["true", "FALSE", ""]), ColType::Boolean);
        assert_eq!(infer_type_from_samples(&["t", "f"]), ColType::Text);
        assert_eq!(infer_type_from_samples(&["2020-01-31", "1999-12-01"]), ColType::Date);
        assert_eq!(infer_type_from_samples(&["2020-01-31", "2020-02-30"]), ColType::Text);
        assert_eq!(infer_type_from_samples(&["2024-05-01T10:00:00+07:00", "2024-05-01 10:00:00.5Z"]), ColType::Timestamptz);
        assert_eq!(infer_type_from_samples(&["2024-05-01T10:00:00"]), ColType::Text, "no time zone");
        assert_eq!(infer_type_from_samples(&["", ""]), ColType::Text);
        assert_eq!(infer_type_from_samples(&[]), ColType::Text);
    }
}
