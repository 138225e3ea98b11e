//! Row → document mapping, shared by every source adapter: the `[[source.table]]` settings
//! ([`TableMapping`]), the database-neutral cell a driver's value is first turned into
//! ([`Cell`]), and the [`Mapper`] that converts a row of cells into a typed, schema-shaped
//! exchange [`Document`] — so that a decimal, a date or a code table means the same thing
//! whichever database it came from.

use std::collections::BTreeMap;

use exhub_schemas::shape::Shape;
use exhub_schemas::{
    Classification, Date, Decimal, Document, Header, Kind, Op, Registry, Sender, SourceInfo, Timestamp, Value,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// How a source starts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Snapshot once, then stream (default).
    #[default]
    Initial,
    /// Never snapshot: stream from the current position.
    Never,
    /// Snapshot at every start.
    Always,
}

/// `[[source.table]]`: one legacy table → one doc type.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The legacy table.
    pub table: String,
    /// The doc type its rows become.
    pub doc_type: String,
    /// Schema version (default: the newest known).
    pub schema_version: Option<u32>,
    /// Key columns.
    pub key: Vec<String>,
    /// Document field → legacy column.
    pub fields: BTreeMap<String, String>,
    /// Code tables: document field → legacy code → the standard's value (e.g. the legacy
    /// registration type `173` → `limited_liability`). A code not in its table is an error.
    #[serde(default)]
    pub values: BTreeMap<String, BTreeMap<String, String>>,
    /// List fields kept in one column: document field → separator (e.g. insurance types
    /// `110,310,410` with `","`). The text is split at the separator, blanks dropped, and each
    /// item goes through the field's code table, if it has one.
    #[serde(default)]
    pub lists: BTreeMap<String, String>,
}

/// A column value as a driver delivered it, before the schema gives it its exchange type.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A binary float (never exact; kept for columns declared so).
    Float(f64),
    /// An exact decimal, as text.
    Decimal(String),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A calendar date.
    Date(u32, u32, u32),
    /// A wall-clock date and time without zone `[y, m, d, h, mi, s, micros]`, read in the
    /// source's time zone.
    DateTime([u32; 7]),
    /// An instant, microseconds since the Unix epoch.
    Instant(i64),
    /// A value the source did not send because it did not change (PostgreSQL's unchanged
    /// TOASTed columns): its field is left out of the body, so sinks leave the column as it is.
    Unchanged,
    /// An array column's elements (PostgreSQL arrays), for list fields.
    List(Vec<Cell>),
}

/// A row that could not become a document: which field, which column, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}: field {field:?} (column {column:?}): {message}")]
pub struct MappingError {
    /// The legacy table.
    pub table: String,
    /// The document field.
    pub field: String,
    /// The legacy column.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

/// A mapping that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    /// No schema for the doc type (or that version).
    #[error("{table}: no schema for {doc_type}{}", version.map(|v| format!(" v{v}")).unwrap_or_default())]
    UnknownDocType {
        /// The legacy table.
        table: String,
        /// Its doc type.
        doc_type: String,
        /// The version asked for.
        version: Option<u32>,
    },
    /// A key column is not mapped to any field.
    #[error("{table}: key column {column:?} is not mapped to a document field")]
    UnmappedKey {
        /// The legacy table.
        table: String,
        /// The key column.
        column: String,
    },
}

/// One mapped field.
#[derive(Debug, Clone)]
struct FieldMap {
    field: String,
    column: String,
    kind: Option<Kind>,
    codes: Option<BTreeMap<String, String>>,
    /// For a list field: the separator when the column keeps the list as text (`lists`), and
    /// the kind of its items.
    list: Option<(Option<String>, Option<Kind>)>,
}

/// Where a row comes from, for its document's header.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// `mysql`, `postgres`, `mssql`.
    pub kind: &'a str,
    /// The source's name (`header.sender.system`).
    pub source: &'a str,
    /// The publishing org.
    pub org: &'a str,
    /// The legacy database.
    pub db: &'a str,
}

/// A row's place in the source's change stream.
#[derive(Debug, Clone)]
pub struct RowPosition {
    /// The position in the source's own notation (`mysql-bin.000003:81233`, an LSN…).
    pub position: String,
    /// The transaction's id.
    pub tx: String,
    /// The row's sequence number inside its transaction (0 for snapshot rows).
    pub seq: u64,
    /// When the transaction committed (Unix micros).
    pub committed_micros: i64,
}

/// Converts rows of one legacy table into documents of its doc type.
#[derive(Debug, Clone)]
pub struct Mapper {
    table: String,
    doc_type: String,
    version: u32,
    fields: Vec<FieldMap>,
    key: Vec<usize>,
    /// The source's time zone, seconds east of UTC, for zone-less date-times.
    offset_secs: i32,
}

impl Mapper {
    /// A mapper for `mapping`, typed by its schema in `registry`; `offset_secs` is the time zone
    /// the source's zone-less date-times are in.
    pub fn new(mapping: &TableMapping, registry: &Registry, offset_secs: i32) -> Result<Mapper, MapperError> {
        let schema = match mapping.schema_version {
            Some(v) => registry.get(&mapping.doc_type, v),
            None => registry.latest(&mapping.doc_type),
        }
        .ok_or_else(|| MapperError::UnknownDocType {
            table: mapping.table.clone(),
            doc_type: mapping.doc_type.clone(),
            version: mapping.schema_version,
        })?;
        let body = schema.body_shape();
        let fields: Vec<FieldMap> = mapping
            .fields
            .iter()
            .map(|(field, column)| FieldMap {
                field: field.clone(),
                column: column.clone(),
                kind: match body.child(field) {
                    Shape::Scalar(k) => Some(*k),
                    _ => None,
                },
                codes: mapping.values.get(field).cloned(),
                list: match body.child(field) {
                    Shape::List(item) => Some((
                        mapping.lists.get(field).cloned(),
                        match &item.shape {
                            Shape::Scalar(k) => Some(*k),
                            _ => None,
                        },
                    )),
                    _ => mapping.lists.get(field).map(|sep| (Some(sep.clone()), None)),
                },
            })
            .collect();
        let key = mapping
            .key
            .iter()
            .map(|column| {
                fields
                    .iter()
                    .position(|f| &f.column == column)
                    .ok_or_else(|| MapperError::UnmappedKey {
                        table: mapping.table.clone(),
                        column: column.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Mapper {
            table: mapping.table.clone(),
            doc_type: mapping.doc_type.clone(),
            version: schema.version(),
            fields,
            key,
            offset_secs,
        })
    }

    /// The legacy table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The mapped legacy columns, in field order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.column.as_str())
    }

    /// The document for one row. `cell` gives a column's value, `None` when the row has no
    /// such column (it was dropped from the legacy table: a [`MappingError`]). A `delete`
    /// needs only the key columns; other columns it lacks are left out of the body.
    ///
    /// The same row at the same position always gives the same document, byte for byte: its
    /// id comes from the position and `created_at` is the commit time.
    pub fn document(
        &self,
        op: Op,
        mut cell: impl FnMut(&str) -> Option<Cell>,
        origin: &Origin<'_>,
        at: &RowPosition,
    ) -> Result<Document, MappingError> {
        let mut body = BTreeMap::new();
        for (i, f) in self.fields.iter().enumerate() {
            match cell(&f.column) {
                Some(Cell::Unchanged) if !self.key.contains(&i) => {}
                Some(Cell::Unchanged) => return Err(self.error(f, "the key column's value was not sent".into())),
                Some(c) => {
                    let value = self.value(f, c)?;
                    body.insert(f.field.clone(), value);
                }
                None if op == Op::Delete && !self.key.contains(&i) => {}
                None => return Err(self.error(f, "the column is not in the table (dropped or renamed?)".into())),
            }
        }
        let key = self
            .key
            .iter()
            .map(|&i| {
                let f = &self.fields[i];
                (f.field.clone(), body.get(&f.field).cloned().unwrap_or(Value::Null))
            })
            .collect();
        Ok(Document {
            header: Header {
                id: document_id(origin, &self.table, at),
                doc_type: self.doc_type.clone(),
                schema_version: self.version,
                op,
                sender: Sender {
                    org: origin.org.to_owned(),
                    system: Some(origin.source.to_owned()),
                },
                key,
                source: Some(SourceInfo {
                    kind: origin.kind.to_owned(),
                    db: Some(origin.db.to_owned()),
                    table: Some(self.table.clone()),
                    position: Some(at.position.clone()),
                    committed_at: Some(Timestamp::from_unix_micros(at.committed_micros)),
                    tx: Some(at.tx.clone()),
                    seq: Some(at.seq),
                }),
                conversation_id: None,
                in_reply_to: None,
                // The commit time, not the clock: a row re-read after a crash must give the
                // same document (same id *and* content), or the hub would refuse it as a
                // conflicting version of an archived document.
                created_at: Timestamp::from_unix_micros(at.committed_micros),
                classification: Classification::Internal,
                test: false,
                content_hash: None,
                signature: None,
            },
            body,
        })
    }

    fn error(&self, f: &FieldMap, message: String) -> MappingError {
        MappingError {
            table: self.table.clone(),
            field: f.field.clone(),
            column: f.column.clone(),
            message,
        }
    }

    fn value(&self, f: &FieldMap, cell: Cell) -> Result<Value, MappingError> {
        if let Some((separator, item_kind)) = &f.list {
            let items: Vec<Cell> = match (cell, separator) {
                (Cell::Null, _) => return Ok(Value::Null),
                (Cell::List(items), _) => items,
                (other, Some(separator)) => cell_text(&other, self.offset_secs)
                    .split(separator.as_str())
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Cell::Text(item.to_owned()))
                    .collect(),
                (other, None) => {
                    return Err(self.error(
                        f,
                        format!(
                            "{other:?} is not a list: map an array column, or set `lists = {{ {} = \",\" }}` \
                             for a list kept as text",
                            f.field
                        ),
                    ));
                }
            };
            let items =
                items
                    .into_iter()
                    .filter(|item| *item != Cell::Null)
                    .map(|item| {
                        let item =
                            match &f.codes {
                                Some(codes) => {
                                    let code = cell_text(&item, self.offset_secs);
                                    Cell::Text(codes.get(code.trim()).cloned().ok_or_else(|| {
                                        self.error(f, format!("code {code:?} is not in its code table"))
                                    })?)
                                }
                                None => item,
                            };
                        convert(item, *item_kind, self.offset_secs).map_err(|m| self.error(f, m))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
            return Ok(Value::List(items));
        }
        let cell = match (&f.codes, cell) {
            (_, Cell::Null) => return Ok(Value::Null),
            (Some(codes), c) => {
                let code = cell_text(&c, self.offset_secs);
                match codes.get(code.trim()) {
                    Some(v) => Cell::Text(v.clone()),
                    None => return Err(self.error(f, format!("code {code:?} is not in its code table"))),
                }
            }
            (None, c) => c,
        };
        convert(cell, f.kind, self.offset_secs).map_err(|m| self.error(f, m))
    }
}

/// The deterministic id of a row's document: UUIDv7-shaped (commit time in the high bits, so
/// ids sort by time), the rest from a hash of where the row is in the source's stream. A source
/// that re-reads the same rows after a crash therefore publishes the same ids, and the hub
/// archives and routes each row once.
pub fn document_id(origin: &Origin<'_>, table: &str, at: &RowPosition) -> uuid::Uuid {
    let mut h = Sha256::new();
    for part in [origin.org, origin.source, table, &at.position, &at.tx] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(at.seq.to_be_bytes());
    let digest = h.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(at.committed_micros / 1000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// The text of a cell (for code tables and string fields).
fn cell_text(cell: &Cell, offset_secs: i32) -> String {
    match cell {
        Cell::Null | Cell::Unchanged => String::new(),
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::UInt(u) => u.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Decimal(d) | Cell::Text(d) => d.clone(),
        Cell::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Cell::Date(y, m, d) => format!("{y:04}-{m:02}-{d:02}"),
        Cell::DateTime(p) => Timestamp::from_local(*p, offset_secs).map_or_else(|| format!("{p:?}"), |t| t.to_string()),
        Cell::Instant(us) => Timestamp::from_unix_micros_at(*us, offset_secs).to_string(),
        Cell::List(items) => items
            .iter()
            .map(|c| cell_text(c, offset_secs))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Converts a cell into a value of `kind` (the natural kind when the schema does not say).
pub fn convert(cell: Cell, kind: Option<Kind>, offset_secs: i32) -> Result<Value, String> {
    let bad = |c: &Cell, k: Kind| format!("{c:?} cannot be a {k}");
    let kind = match kind {
        Some(k) => k,
        None => return Ok(natural(cell, offset_secs)),
    };
    Ok(match (kind, cell) {
        (_, Cell::Null) => Value::Null,
        (Kind::String, Cell::Bytes(b)) => {
            Value::Text(String::from_utf8(b).map_err(|_| "text is not UTF-8".to_owned())?)
        }
        (Kind::String, Cell::Text(t)) => Value::Text(t),
        (Kind::String, c) => Value::Text(cell_text(&c, offset_secs)),
        (Kind::Integer, Cell::Int(i)) => Value::Int(i),
        (Kind::Integer, Cell::UInt(u)) => {
            Value::Int(i64::try_from(u).map_err(|_| format!("{u} is too large for an integer"))?)
        }
        (Kind::Integer, Cell::Bool(b)) => Value::Int(i64::from(b)),
        (Kind::Integer, c @ (Cell::Text(_) | Cell::Decimal(_))) => {
            let text = cell_text(&c, offset_secs);
            Value::Int(text.trim().parse().map_err(|_| bad(&c, Kind::Integer))?)
        }
        (Kind::Decimal, Cell::Int(i)) => decimal(&i.to_string())?,
        (Kind::Decimal, Cell::UInt(u)) => decimal(&u.to_string())?,
        (Kind::Decimal, Cell::Decimal(d) | Cell::Text(d)) => decimal(d.trim())?,
        (Kind::Decimal, Cell::Float(f)) if f.is_finite() => decimal(&f.to_string())?,
        (Kind::Date, Cell::Date(y, m, d)) => date(&format!("{y:04}-{m:02}-{d:02}"))?,
        (Kind::Date, Cell::DateTime([y, m, d, 0, 0, 0, 0])) => date(&format!("{y:04}-{m:02}-{d:02}"))?,
        (Kind::Date, Cell::Text(t)) => date(t.trim())?,
        (Kind::Timestamp, Cell::DateTime(p)) => Value::Timestamp(
            Timestamp::from_local(p, offset_secs).ok_or_else(|| format!("{p:?} is not a real date and time"))?,
        ),
        (Kind::Timestamp, Cell::Date(y, m, d)) => Value::Timestamp(
            Timestamp::from_local([y, m, d, 0, 0, 0, 0], offset_secs)
                .ok_or_else(|| format!("{y}-{m}-{d} is not a real date"))?,
        ),
        (Kind::Timestamp, Cell::Instant(us)) => Value::Timestamp(Timestamp::from_unix_micros_at(us, offset_secs)),
        (Kind::Timestamp, Cell::Text(t)) => {
            Value::Timestamp(Timestamp::parse(t.trim()).ok_or_else(|| format!("{t:?} is not an RFC 3339 timestamp"))?)
        }
        (Kind::Boolean, Cell::Bool(b)) => Value::Bool(b),
        (Kind::Boolean, Cell::Int(i)) => Value::Bool(i != 0),
        (Kind::Boolean, Cell::UInt(u)) => Value::Bool(u != 0),
        (Kind::Binary, Cell::Bytes(b)) => Value::Binary(b),
        (Kind::Binary, Cell::Text(t)) => Value::Binary(t.into_bytes()),
        (k, c) => return Err(bad(&c, k)),
    })
}

fn decimal(text: &str) -> Result<Value, String> {
    Decimal::parse(text)
        .map(Value::Decimal)
        .ok_or_else(|| format!("{text:?} is not a decimal"))
}

fn date(text: &str) -> Result<Value, String> {
    Date::parse(text)
        .map(Value::Date)
        .ok_or_else(|| format!("{text:?} is not a date"))
}

/// The value a cell has when the schema does not type its field.
fn natural(cell: Cell, offset_secs: i32) -> Value {
    match cell {
        Cell::Null | Cell::Unchanged => Value::Null,
        Cell::Bool(b) => Value::Bool(b),
        Cell::Int(i) => Value::Int(i),
        Cell::UInt(u) => i64::try_from(u).map_or_else(|_| Value::Text(u.to_string()), Value::Int),
        c @ (Cell::Float(_) | Cell::Decimal(_)) => {
            let text = cell_text(&c, offset_secs);
            Decimal::parse(&text).map_or(Value::Text(text), Value::Decimal)
        }
        Cell::Text(t) => Value::Text(t),
        Cell::Bytes(b) => match String::from_utf8(b) {
            Ok(t) => Value::Text(t),
            Err(e) => Value::Binary(e.into_bytes()),
        },
        c @ Cell::Date(..) => Date::parse(&cell_text(&c, offset_secs)).map_or(Value::Null, Value::Date),
        Cell::DateTime(p) => Timestamp::from_local(p, offset_secs).map_or(Value::Null, Value::Timestamp),
        Cell::Instant(us) => Value::Timestamp(Timestamp::from_unix_micros_at(us, offset_secs)),
        Cell::List(items) => Value::List(items.into_iter().map(|c| natural(c, offset_secs)).collect()),
    }
}

/// The order of a document's source position, as text that sorts like the positions do, for
/// sinks to keep the newest version of each key: `None` when the document does not say where it
/// comes from in a notation this version knows.
///
/// MySQL `binlog.000042:1234` orders by file number then offset; PostgreSQL `16/B374D848` by
/// LSN; SQL Server `0x…` LSNs by their bytes. The document's `seq` orders rows inside one
/// transaction (snapshot rows have 0, streamed rows start at 1, so a row streamed from the
/// snapshot's own position sorts after it).
pub fn order_key(source: &SourceInfo) -> Option<String> {
    let position = source.position.as_deref()?;
    let seq = source.seq.unwrap_or(0);
    let (major, minor) = match source.kind.as_str() {
        "mysql" => {
            let (file, offset) = position.rsplit_once(':')?;
            let (_, number) = file.rsplit_once('.')?;
            (number.parse::<u64>().ok()?, offset.parse::<u64>().ok()?)
        }
        "postgres" => {
            let (hi, lo) = position.split_once('/')?;
            (
                0,
                (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?,
            )
        }
        _ => return Some(format!("{position}:{seq:020}")),
    };
    Some(format!("{major:020}:{minor:020}:{seq:020}"))
}

/// Whether [`order_key`] orders positions of `kind` as given (oldest first, each with
/// sequence 1): an adapter's unit tests call it with its positions' edge cases, so that a kind
/// whose positions do not sort (a number written without leading zeros: "999" after "1000")
/// fails there, not silently at the sinks. The error names the first pair out of order.
pub fn order_key_sorts(kind: &str, positions: &[&str]) -> Result<(), String> {
    let key = |p: &str| {
        order_key(&SourceInfo {
            kind: kind.into(),
            db: None,
            table: None,
            position: Some(p.into()),
            committed_at: None,
            tx: None,
            seq: Some(1),
        })
        .ok_or_else(|| format!("{kind} position {p:?} has no order key"))
    };
    for pair in positions.windows(2) {
        if key(pair[0])? >= key(pair[1])? {
            return Err(format!(
                "{kind} position {:?} does not sort before {:?}",
                pair[0], pair[1]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::builtin().unwrap()
    }

    fn mapping() -> TableMapping {
        toml::from_str(
            r#"
            table = "nsr_djxx"
            doc_type = "tax.registration"
            key = ["nsrsbh"]
            fields = { taxpayer_id = "nsrsbh", name = "nsrmc", registered_at = "djrq", registration_type = "djzclx", taxpayer_status = "nsrzt", district = "ssqx", capital = "zczb", updated_at = "xgsj" }
            values.registration_type = { "173" = "limited_liability" }
            values.taxpayer_status = { "03" = "normal" }
            "#,
        )
        .unwrap()
    }

    fn origin() -> Origin<'static> {
        Origin {
            kind: "mysql",
            source: "tax-ctais",
            org: "nanhai.tax",
            db: "ctais",
        }
    }

    fn at(seq: u64) -> RowPosition {
        RowPosition {
            position: "mysql-bin.000003:81233".into(),
            tx: "mysql-bin.000003:81233".into(),
            seq,
            committed_micros: 1_795_334_400_000_000,
        }
    }

    fn row(column: &str) -> Option<Cell> {
        Some(match column {
            "nsrsbh" => Cell::Bytes(exhub_schemas::samples::taxpayer_id(7).into_bytes()),
            "nsrmc" => Cell::Bytes("佛山市南海区恒达五金制品有限公司".as_bytes().to_vec()),
            "djrq" => Cell::Date(2019, 3, 1),
            "djzclx" => Cell::Text("173".into()),
            "nsrzt" => Cell::Text("03".into()),
            "ssqx" => Cell::Text("南海".into()),
            "zczb" => Cell::Decimal("1200000.00".into()),
            "xgsj" => Cell::DateTime([2026, 11, 22, 16, 0, 0, 0]),
            _ => return None,
        })
    }

    #[test]
    fn a_row_becomes_a_valid_document() {
        let registry = registry();
        let mapper = Mapper::new(&mapping(), &registry, 8 * 3600).unwrap();
        let doc = mapper.document(Op::Upsert, row, &origin(), &at(1)).unwrap();
        assert!(registry.validate(&doc).is_empty(), "{:?}", registry.validate(&doc));
        assert_eq!(doc.body["registration_type"], Value::Text("limited_liability".into()));
        assert_eq!(
            doc.body["capital"],
            Value::Decimal(Decimal::parse("1200000.00").unwrap())
        );
        assert_eq!(
            doc.body["updated_at"],
            Value::Timestamp(Timestamp::parse("2026-11-22T16:00:00.000000+08:00").unwrap())
        );
        assert_eq!(doc.header.key.len(), 1);
        // Same place in the stream, same document; another row, another id.
        let again = mapper.document(Op::Upsert, row, &origin(), &at(1)).unwrap();
        assert_eq!(doc.header.id, again.header.id);
        assert_eq!(
            exhub_schemas::canonical::content_hash(&doc),
            exhub_schemas::canonical::content_hash(&again)
        );
        assert_eq!(doc.header.id.get_version_num(), 7);
        let next = mapper.document(Op::Upsert, row, &origin(), &at(2)).unwrap();
        assert_ne!(doc.header.id, next.header.id);
    }

    #[test]
    fn a_list_kept_in_one_column_becomes_a_list() {
        let registry = registry();
        let mapping: TableMapping = toml::from_str(
            r#"
            table = "si_cbdj"
            doc_type = "social_security.enrollment"
            key = ["cbdjh"]
            fields = { enrollment_id = "cbdjh", person_id = "sfzh", person_name = "xm", employer_credit_code = "dwdm", insurance_types = "xzlx", contribution_base = "jfjs", started_on = "cbrq", status = "cbzt" }
            lists = { insurance_types = "," }
            values.insurance_types = { "110" = "pension", "310" = "medical", "410" = "work_injury" }
            values.status = { "1" = "active" }
            "#,
        )
        .unwrap();
        let mapper = Mapper::new(&mapping, &registry, 0).unwrap();
        let types = std::cell::RefCell::new("110, 310,,410");
        let row = |c: &str| {
            Some(match c {
                "cbdjh" => Cell::Text("SI2026000001".into()),
                "sfzh" => Cell::Text("440605198503121238".into()),
                "xm" => Cell::Text("陈志强".into()),
                "dwdm" => Cell::Text("91440605MA4UJ7KX1J".into()),
                "xzlx" => Cell::Text((*types.borrow()).into()),
                "jfjs" => Cell::Decimal("5280.00".into()),
                "cbrq" => Cell::Date(2020, 1, 1),
                "cbzt" => Cell::Text("1".into()),
                _ => return None,
            })
        };
        let doc = mapper.document(Op::Upsert, row, &origin(), &at(1)).unwrap();
        assert!(registry.validate(&doc).is_empty(), "{:?}", registry.validate(&doc));
        assert_eq!(
            doc.body["insurance_types"],
            Value::List(vec![
                Value::Text("pension".into()),
                Value::Text("medical".into()),
                Value::Text("work_injury".into())
            ])
        );
        *types.borrow_mut() = "110,999";
        let e = mapper.document(Op::Upsert, row, &origin(), &at(2)).unwrap_err();
        assert!(e.message.contains("\"999\" is not in its code table"), "{e}");
        // An array column (PostgreSQL) needs no separator: its elements go through the codes.
        let mut no_sep = mapping.clone();
        no_sep.lists.clear();
        let mapper = Mapper::new(&no_sep, &registry, 0).unwrap();
        let array = |c: &str| match c {
            "xzlx" => Some(Cell::List(vec![
                Cell::Text("310".into()),
                Cell::Null,
                Cell::Text("410".into()),
            ])),
            other => row(other),
        };
        let doc = mapper.document(Op::Upsert, array, &origin(), &at(3)).unwrap();
        assert_eq!(
            doc.body["insurance_types"],
            Value::List(vec![Value::Text("medical".into()), Value::Text("work_injury".into())])
        );
        // Text in a list field without a separator is a mapping error that says what to do.
        *types.borrow_mut() = "110";
        let e = mapper.document(Op::Upsert, row, &origin(), &at(4)).unwrap_err();
        assert!(e.message.contains("lists = { insurance_types"), "{e}");
    }

    #[test]
    fn missing_columns_unknown_codes_and_bad_types_are_mapping_errors() {
        let registry = registry();
        let mapper = Mapper::new(&mapping(), &registry, 0).unwrap();
        let dropped = mapper
            .document(
                Op::Upsert,
                |c| if c == "zczb" { None } else { row(c) },
                &origin(),
                &at(1),
            )
            .unwrap_err();
        assert_eq!(dropped.column, "zczb");
        assert!(dropped.message.contains("not in the table"), "{dropped}");
        // A delete needs only its key.
        let delete = mapper
            .document(
                Op::Delete,
                |c| if c == "nsrsbh" { row(c) } else { None },
                &origin(),
                &at(1),
            )
            .unwrap();
        assert_eq!(delete.body.len(), 1);
        let code = mapper
            .document(
                Op::Upsert,
                |c| {
                    if c == "nsrzt" {
                        Some(Cell::Text("99".into()))
                    } else {
                        row(c)
                    }
                },
                &origin(),
                &at(1),
            )
            .unwrap_err();
        assert!(code.message.contains("code \"99\""), "{code}");
        let date = mapper
            .document(
                Op::Upsert,
                |c| if c == "djrq" { Some(Cell::Int(5)) } else { row(c) },
                &origin(),
                &at(1),
            )
            .unwrap_err();
        assert_eq!(date.field, "registered_at");
    }

    #[test]
    fn unusable_mappings_are_refused() {
        let registry = registry();
        let mut m = mapping();
        m.key = vec!["id".into()];
        assert!(matches!(
            Mapper::new(&m, &registry, 0),
            Err(MapperError::UnmappedKey { .. })
        ));
        m.doc_type = "no.such".into();
        assert!(matches!(
            Mapper::new(&m, &registry, 0),
            Err(MapperError::UnknownDocType { .. })
        ));
    }

    #[test]
    fn conversions_keep_exact_values() {
        assert!(convert(Cell::UInt(u64::MAX), Some(Kind::Integer), 0).is_err());
        assert_eq!(
            convert(Cell::Int(-5), Some(Kind::Decimal), 0).unwrap(),
            decimal("-5").unwrap()
        );
        assert_eq!(
            convert(Cell::Instant(0), Some(Kind::Timestamp), 0)
                .unwrap()
                .scalar_text()
                .unwrap(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            convert(Cell::Int(1), Some(Kind::Boolean), 0).unwrap(),
            Value::Bool(true)
        );
        assert!(convert(Cell::Bytes(vec![0xff]), Some(Kind::String), 0).is_err());
        assert_eq!(
            convert(Cell::Bytes(vec![0xff]), None, 0).unwrap(),
            Value::Binary(vec![0xff])
        );
        assert_eq!(convert(Cell::Null, Some(Kind::Date), 0).unwrap(), Value::Null);
    }

    #[test]
    fn order_keys_sort_like_positions() {
        let info = |kind: &str, position: &str, seq: u64| SourceInfo {
            kind: kind.into(),
            db: None,
            table: None,
            position: Some(position.into()),
            committed_at: None,
            tx: None,
            seq: Some(seq),
        };
        let k = |kind, p, s| order_key(&info(kind, p, s)).unwrap();
        assert!(k("mysql", "mysql-bin.000009:999999", 5) < k("mysql", "mysql-bin.000010:4", 0));
        assert!(k("mysql", "mysql-bin.000010:4", 0) < k("mysql", "mysql-bin.000010:4", 1));
        assert!(k("mysql", "mysql-bin.000010:99", 0) < k("mysql", "mysql-bin.000010:100", 0));
        assert!(k("postgres", "0/FFFFFFFF", 9) < k("postgres", "1/0", 0));
        assert!(order_key(&info("mysql", "nonsense", 0)).is_none());
    }

    #[test]
    fn positions_that_do_not_sort_as_text_are_caught() {
        assert!(order_key_sorts("mysql", &["mysql-bin.000009:999", "mysql-bin.000009:1000"]).is_ok());
        // An Oracle SCN written as a plain number: "999" sorts after "1000" as text.
        assert!(order_key_sorts("oracle", &["999", "1000"]).is_err());
        assert!(order_key_sorts("oracle", &["00000000000000000999", "00000000000000001000"]).is_ok());
    }
}
