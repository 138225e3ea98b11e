//! The SQL Server source (not verified against a real SQL Server): CDC checks, a snapshot under
//! SNAPSHOT isolation consistent with the LSN where streaming starts, then polling of each
//! table's capture instance, every mapped row published as an exchange document with
//! confirms, each table's position moved only past what the broker confirmed.
//!
//! Positions are per table (the sinks keep their bookkeeping per source, table and key, so
//! tables need no order among themselves): the commit LSN of a transaction and how many of its
//! rows are confirmed ([`Position`]). Snapshot rows carry the LSN read just before the snapshot
//! (older than the data read) and sequence 0; streaming starts after it, so every later change
//! is streamed and wins at the sinks.
//!
//! A capture instance replaced after a DDL (a table has two while the DBA moves it): the
//! source reads the old instance up to the new one's start LSN, then follows the new one — if
//! the new one still captures every mapped column; otherwise it stops and names the column.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use exhub_connect::mapping::{RowPosition, SnapshotMode};
use exhub_connect::outbox::{FLUSH_DOCS, Outbox};
use exhub_connect::source::{DriverError, SourceCommon};
use exhub_connect::{Cell, CheckpointStore, Mapper, Publisher};
use exhub_schemas::{Op, Registry};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tiberius::{ColumnData, Row};
use tokio_util::sync::CancellationToken;

use crate::connect::{MssqlClient, config, connect};
use crate::lsn::{Lsn, Position};
use crate::sql;
use crate::values::cell;

/// Rows per snapshot chunk.
const CHUNK_ROWS: usize = 2000;

/// What the source needs to run (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// What every source is told.
    pub common: SourceCommon,
    /// Time zone of the server's zone-less date-times (and of commit times), seconds east of UTC.
    pub offset_secs: i32,
    /// How often to poll when changes keep coming; idle polls back off up to 8 times this.
    pub poll: Duration,
}

/// Why the source stopped.
pub type SourceError = exhub_connect::source::SourceError<MssqlError>;

/// A SQL Server driver error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MssqlError(pub Box<tiberius::error::Error>);

impl DriverError for MssqlError {
    /// A lost connection or a redirect to another server.
    fn is_passing(&self) -> bool {
        matches!(
            *self.0,
            tiberius::error::Error::Io { .. } | tiberius::error::Error::Routing { .. }
        )
    }
}

/// The source kind, as errors name it.
const KIND: &str = "SQL Server";

/// The checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Per table: the capture instance read and the position in it.
    tables: BTreeMap<String, TableState>,
    /// A snapshot in progress.
    snapshot: Option<SnapshotState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableState {
    instance: String,
    position: Position,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotState {
    /// The LSN read before the snapshot (its rows' label); streaming starts after it.
    #[serde(with = "lsn_text")]
    label: Lsn,
    /// Attempts so far (a resumed snapshot reads new data, so its documents get new ids).
    attempt: u32,
    /// When the first attempt started (the snapshot rows' commit time), Unix micros.
    started_micros: i64,
    /// Tables finished.
    done: Vec<String>,
    /// Per table, the key (as text) of the last row confirmed.
    after: BTreeMap<String, Vec<String>>,
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::lsn::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&lsn.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        Lsn::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One mapped table as the server describes it.
struct Table {
    mapper: Mapper,
    name: String,
    key: Vec<String>,
    columns: Vec<sql::Column>,
    /// The server's row count (for the progress bar).
    estimated_rows: u64,
}

/// The SQL Server source adapter.
pub struct MssqlSource {
    settings: SourceSettings,
    registry: Arc<Registry>,
    store: CheckpointStore,
    config: tiberius::Config,
    database: String,
}

impl MssqlSource {
    /// A source with `settings`; documents are typed by `registry`.
    pub fn new(settings: SourceSettings, registry: Arc<Registry>) -> Result<MssqlSource, SourceError> {
        let (config, database) =
            config(&settings.common.url).map_err(|e| setup(&settings.common.name, e.to_string()))?;
        let store = CheckpointStore::new(settings.common.checkpoint.clone());
        Ok(MssqlSource {
            settings,
            registry,
            store,
            config,
            database,
        })
    }

    /// Forgets the checkpoint: the next start takes a new snapshot (mode `initial`).
    pub fn reset(&self) -> Result<(), SourceError> {
        Ok(self.settings.common.forget_checkpoint()?)
    }

    /// Runs until `cancel` or an error that retrying cannot fix.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<(), SourceError> {
        let mut retry = self.settings.common.retry();
        loop {
            let result = self.run_once(retry.publisher(), cancel).await;
            if !retry.again(&self.settings.common.name, result, cancel).await? {
                return Ok(());
            }
        }
    }

    async fn run_once(&self, publisher: &mut Publisher, cancel: &CancellationToken) -> Result<(), SourceError> {
        let s = &self.settings;
        let mut client = connect(self.config.clone()).await.map_err(|e| match e {
            tiberius::error::Error::Io { kind, message } => setup(
                &s.common.name,
                format!(
                    "cannot reach SQL Server at {}: {message} ({kind:?})",
                    self.config.get_addr()
                ),
            ),
            e => self.server(e),
        })?;
        let enabled = first(&mut client, sql::DB_CDC_ENABLED, &[])
            .await
            .map_err(|e| self.server(e))?;
        if !matches!(enabled.as_ref().and_then(|r| r.get::<bool, _>(0)), Some(true)) {
            return Err(setup(
                &s.common.name,
                format!(
                    "CDC is not enabled on database {} (a DBA runs EXEC sys.sp_cdc_enable_db)",
                    self.database
                ),
            ));
        }
        let tables = self.describe(&mut client).await?;
        let mut state: State = self.store.load()?.unwrap_or_default();
        let wants_snapshot = match s.common.snapshot {
            SnapshotMode::Never => false,
            SnapshotMode::Initial => state.tables.is_empty() || state.snapshot.is_some(),
            SnapshotMode::Always => true,
        };
        let mut out = Outbox::new(self.settings.common.identity("mssql", &self.database), publisher);
        if wants_snapshot {
            if state.snapshot.is_none() {
                let label = max_lsn(&mut client)
                    .await
                    .map_err(|e| self.server(e))?
                    .unwrap_or_default();
                state.snapshot = Some(SnapshotState {
                    label,
                    attempt: 0,
                    started_micros: exhub_schemas::Timestamp::now().unix_micros(),
                    done: Vec::new(),
                    after: BTreeMap::new(),
                });
            }
            if !self
                .snapshot(&mut client, &tables, &mut state, &mut out, cancel)
                .await?
            {
                return Ok(());
            }
        }
        let start = state
            .snapshot
            .take()
            .map(|snap| snap.label.increment().unwrap_or(snap.label));
        // Without a snapshot, a table seen for the first time streams from now on (`never`).
        let now = match start {
            Some(s) => s,
            None => {
                let max = max_lsn(&mut client)
                    .await
                    .map_err(|e| self.server(e))?
                    .unwrap_or_default();
                max.increment().unwrap_or(max)
            }
        };
        for t in &tables {
            let instance = self.instance(&mut client, t).await?;
            let entry = state.tables.entry(t.name.clone()).or_insert_with(|| TableState {
                instance: instance.clone(),
                position: Position { lsn: now, rows: 0 },
            });
            if let Some(start) = start {
                entry.position = Position { lsn: start, rows: 0 };
            }
        }
        self.store.save(&state)?;
        tracing::info!(source = %s.common.name, tables = tables.len(), "polling the change tables");
        let mut idle = 0u32;
        loop {
            let mut found = 0u64;
            // One reading of the capture job's progress serves every table of this round.
            if let Some(max) = max_lsn(&mut client).await.map_err(|e| self.server(e))? {
                for t in &tables {
                    found += self
                        .poll_table(&mut client, t, max, &mut state, &mut out, cancel)
                        .await?;
                }
            }
            out.flush(cancel).await?;
            self.store.save(&state)?;
            idle = if found == 0 { (idle + 1).min(3) } else { 0 };
            let wait = s.poll * 2u32.pow(idle);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The mapped tables with their column types; every one must exist and be tracked by CDC.
    async fn describe(&self, client: &mut MssqlClient) -> Result<Vec<Table>, SourceError> {
        let s = &self.settings;
        let mut tables = Vec::new();
        for mapping in &s.common.tables {
            let (schema, name) = mapping.table.split_once('.').unwrap_or(("dbo", &mapping.table));
            let rows = client
                .query(
                    "SELECT c.name, ty.name, t.is_tracked_by_cdc FROM sys.tables t \
                     JOIN sys.schemas s ON s.schema_id = t.schema_id JOIN sys.columns c ON c.object_id = t.object_id \
                     JOIN sys.types ty ON ty.user_type_id = c.user_type_id WHERE s.common.name = @P1 AND t.name = @P2",
                    &[&schema, &name],
                )
                .await
                .map_err(|e| self.server(e))?
                .into_first_result()
                .await
                .map_err(|e| self.server(e))?;
            if rows.is_empty() {
                return Err(setup(
                    &s.common.name,
                    format!("table {schema}.{name} does not exist (or SELECT is not granted)"),
                ));
            }
            if !rows.iter().any(|r| r.get::<bool, _>(2) == Some(true)) {
                return Err(setup(
                    &s.common.name,
                    format!(
                        "table {schema}.{name} is not tracked by CDC (a DBA runs EXEC sys.sp_cdc_enable_table \
                         @source_schema = N'{schema}', @source_name = N'{name}', @role_name = NULL)"
                    ),
                ));
            }
            let types: HashMap<String, String> = rows
                .iter()
                .filter_map(|r| Some((r.get::<&str, _>(0)?.to_owned(), r.get::<&str, _>(1)?.to_owned())))
                .collect();
            let mapper = Mapper::new(mapping, &self.registry, s.offset_secs)?;
            let columns = mapper
                .columns()
                .map(|c| match types.get(c) {
                    Some(t) => Ok(sql::Column {
                        name: c.to_owned(),
                        type_name: t.clone(),
                    }),
                    None => Err(setup(
                        &s.common.name,
                        format!("table {schema}.{name} has no column {c}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let qualified = format!("{schema}.{name}");
            let estimated_rows = first(
                client,
                "SELECT CAST(SUM(row_count) AS bigint) FROM sys.dm_db_partition_stats \
                 WHERE object_id = OBJECT_ID(@P1) AND index_id IN (0, 1)",
                &[&qualified.as_str()],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<i64, _>(0))
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
            tables.push(Table {
                mapper,
                name: mapping.table.clone(),
                key: mapping.key.clone(),
                columns,
                estimated_rows,
            });
        }
        Ok(tables)
    }

    /// The capture instance to read for `table`: the newest that captures every mapped column.
    async fn instance(&self, client: &mut MssqlClient, table: &Table) -> Result<String, SourceError> {
        let (schema, name) = table.name.split_once('.').unwrap_or(("dbo", &table.name));
        let rows = client
            .query(sql::CAPTURE_INSTANCES, &[&schema, &name])
            .await
            .map_err(|e| self.server(e))?
            .into_first_result()
            .await
            .map_err(|e| self.server(e))?;
        let Some(newest) = rows.first().and_then(|r| r.get::<&str, _>(0)).map(str::to_owned) else {
            return Err(setup(
                &self.settings.common.name,
                format!("table {} has no capture instance", table.name),
            ));
        };
        let captured: Vec<String> = client
            .query(sql::CAPTURED_COLUMNS, &[&newest.as_str()])
            .await
            .map_err(|e| self.server(e))?
            .into_first_result()
            .await
            .map_err(|e| self.server(e))?
            .iter()
            .filter_map(|r| r.get::<&str, _>(0).map(str::to_owned))
            .collect();
        if let Some(missing) = table.columns.iter().find(|c| !captured.contains(&c.name)) {
            return Err(setup(
                &self.settings.common.name,
                format!(
                    "capture instance {newest} of {} does not capture mapped column {} (after a DDL the DBA \
                     recreated it without it): fix the mapping or the capture instance",
                    table.name, missing.name
                ),
            ));
        }
        Ok(newest)
    }

    /// Snapshot of every table not done yet, under SNAPSHOT isolation; `false` when cancelled.
    async fn snapshot(
        &self,
        client: &mut MssqlClient,
        tables: &[Table],
        state: &mut State,
        out: &mut Outbox<'_>,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        if let Some(snap) = state.snapshot.as_mut() {
            snap.attempt += 1;
        }
        self.store.save(state)?;
        client
            .simple_query("SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION")
            .await
            .map_err(|e| self.server(e))?
            .into_results()
            .await
            .map_err(|e| self.server(e))?;
        for table in tables {
            let Some(snap) = state.snapshot.as_ref() else { break };
            if snap.done.contains(&table.name) {
                continue;
            }
            tracing::info!(source = %self.settings.common.name, table = %table.name, estimated_rows = table.estimated_rows, "snapshot of table started");
            let bar = exhub_connect::outbox::snapshot_progress(table.estimated_rows, &table.name);
            while let Some(snap) = state.snapshot.as_ref() {
                let after = snap.after.get(&table.name).cloned();
                let mut select = table.columns.clone();
                select.extend(table.key.iter().map(|k| sql::Column {
                    name: k.clone(),
                    type_name: "key".into(),
                }));
                let text = sql::snapshot_chunk(&table.name, &select, &table.key, CHUNK_ROWS, after.is_some());
                let params: Vec<&dyn tiberius::ToSql> =
                    after.iter().flatten().map(|k| k as &dyn tiberius::ToSql).collect();
                let rows = client
                    .query(text, &params)
                    .await
                    .map_err(|e| self.server(e))?
                    .into_first_result()
                    .await
                    .map_err(|e| self.server(e))?;
                let mut last = None;
                for row in &rows {
                    let cells: Vec<&ColumnData<'static>> = row.cells().map(|(_, v)| v).collect();
                    let key: Vec<String> = cells[table.columns.len()..].iter().map(|v| key_text(v)).collect();
                    let mut by_name: HashMap<&str, Cell> = table
                        .columns
                        .iter()
                        .zip(&cells)
                        .map(|(c, v)| (c.name.as_str(), cell(v)))
                        .collect();
                    let position = RowPosition {
                        position: snap.label.to_string(),
                        tx: format!("snapshot:{}:{}:{}", snap.label, snap.attempt, key.join("\u{1f}")),
                        seq: 0,
                        committed_micros: snap.started_micros,
                    };
                    out.row(&table.mapper, Op::Snapshot, |c| by_name.remove(c), &position);
                    last = Some(key);
                }
                bar.inc(rows.len() as u64);
                out.flush(cancel).await?;
                let Some(key) = last else { break };
                if let Some(snap) = state.snapshot.as_mut() {
                    snap.after.insert(table.name.clone(), key);
                }
                self.store.save(state)?;
                if rows.len() < CHUNK_ROWS {
                    break;
                }
                if cancel.is_cancelled() {
                    return Ok(false);
                }
            }
            bar.finish_and_clear();
            if let Some(snap) = state.snapshot.as_mut() {
                snap.done.push(table.name.clone());
                snap.after.remove(&table.name);
            }
            self.store.save(state)?;
            tracing::info!(source = %self.settings.common.name, table = %table.name, "snapshot of table done");
        }
        client
            .simple_query("COMMIT")
            .await
            .map_err(|e| self.server(e))?
            .into_results()
            .await
            .map_err(|e| self.server(e))?;
        Ok(true)
    }

    /// Reads one table's changes from its position to `max` (the capture job's highest LSN);
    /// the number of rows.
    async fn poll_table(
        &self,
        client: &mut MssqlClient,
        table: &Table,
        max: Lsn,
        state: &mut State,
        out: &mut Outbox<'_>,
        cancel: &CancellationToken,
    ) -> Result<u64, SourceError> {
        let Some(ts) = state.tables.get(&table.name).cloned() else {
            return Ok(0);
        };
        let newest = self.instance(client, table).await?;
        // Reading the old instance stops where the new one starts; then the new one is followed.
        let (instance, to) = if newest == ts.instance {
            (ts.instance.clone(), max)
        } else {
            let start = start_lsn(client, &newest).await.map_err(|e| self.server(e))?;
            if ts.position.lsn >= start {
                tracing::warn!(source = %self.settings.common.name, table = %table.name, from = %ts.instance, to = %newest, "following the new capture instance");
                if let Some(t) = state.tables.get_mut(&table.name) {
                    t.instance = newest.clone();
                }
                (newest, max)
            } else {
                (ts.instance.clone(), start.min(max))
            }
        };
        let min = first(client, sql::MIN_LSN, &[&instance.as_str()])
            .await
            .map_err(|e| self.server(e))?
            .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()))
            .unwrap_or_default();
        if ts.position.lsn < min && ts.position.lsn != Lsn::default() {
            return Err(setup(
                &self.settings.common.name,
                format!(
                    "the changes of {} since {} were removed by the CDC cleanup job (the oldest kept is {min}): \
                     take a new snapshot with `exhub source {} --reset`",
                    table.name, ts.position.lsn, self.settings.common.name
                ),
            ));
        }
        let from = ts.position.lsn.max(min);
        if from > to {
            return Ok(0);
        }
        let text = sql::changes(&instance, &table.columns);
        let from_bytes = from.bytes().to_vec();
        let to_bytes = to.bytes().to_vec();
        let mut stream = client
            .query(text, &[&from_bytes.as_slice(), &to_bytes.as_slice()])
            .await
            .map_err(|e| self.server(e))?
            .into_row_stream();
        let (mut count, mut tx_lsn, mut seq) = (0u64, None::<Lsn>, 0u64);
        let mut pending: Option<Position> = None;
        while let Some(row) = stream.try_next().await.map_err(|e| self.server(e))? {
            let Some(lsn) = row.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()) else {
                continue;
            };
            if tx_lsn != Some(lsn) {
                tx_lsn = Some(lsn);
                seq = 0;
            }
            seq += 1;
            if ts.position.covers(lsn, seq) {
                continue;
            }
            let op = match row.get::<i32, _>(2) {
                Some(1) => Op::Delete,
                Some(2 | 4) => Op::Upsert,
                _ => continue,
            };
            self.change_row(table, &row, op, lsn, seq, out);
            count += 1;
            pending = Some(Position { lsn, rows: seq });
            if out.pending() >= FLUSH_DOCS {
                // The row stream holds the connection; publishing does not need it.
                out.flush(cancel).await?;
                if let (Some(p), Some(t)) = (pending, state.tables.get_mut(&table.name)) {
                    t.position = p;
                }
                self.store.save(state)?;
            }
        }
        drop(stream);
        out.flush(cancel).await?;
        if let Some(t) = state.tables.get_mut(&table.name) {
            if let Some(p) = pending {
                t.position = p;
            }
            // Everything up to `to` is read: the next poll starts after it.
            if to >= t.position.lsn
                && let Some(next) = to.increment()
            {
                t.position = Position { lsn: next, rows: 0 };
            }
        }
        Ok(count)
    }

    fn change_row(&self, table: &Table, row: &Row, op: Op, lsn: Lsn, seq: u64, out: &mut Outbox<'_>) {
        let cells: Vec<&ColumnData<'static>> = row.cells().map(|(_, v)| v).collect();
        // __$start_lsn, __$seqval, __$operation, commit time, then the columns in mapping order.
        let committed_micros = match cells.get(3).map(|v| cell(v)) {
            Some(Cell::DateTime(parts)) => {
                exhub_schemas::Timestamp::from_local(parts, self.settings.offset_secs).map_or(0, |t| t.unix_micros())
            }
            _ => 0,
        };
        let mut by_name: HashMap<&str, Cell> = table
            .columns
            .iter()
            .zip(cells.iter().skip(4))
            .map(|(c, v)| (c.name.as_str(), cell(v)))
            .collect();
        let position = RowPosition {
            position: lsn.to_string(),
            tx: lsn.to_string(),
            seq,
            committed_micros,
        };
        out.row(&table.mapper, op, |c| by_name.remove(c), &position);
    }

    fn server(&self, error: tiberius::error::Error) -> SourceError {
        SourceError::Driver {
            kind: KIND,
            source_name: self.settings.common.name.clone(),
            error: MssqlError(Box::new(error)),
        }
    }
}

/// The first row of a query.
async fn first(
    client: &mut MssqlClient,
    text: &str,
    params: &[&dyn tiberius::ToSql],
) -> Result<Option<Row>, tiberius::error::Error> {
    client.query(text, params).await?.into_row().await
}

async fn max_lsn(client: &mut MssqlClient) -> Result<Option<Lsn>, tiberius::error::Error> {
    Ok(first(client, sql::MAX_LSN, &[])
        .await?
        .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok())))
}

async fn start_lsn(client: &mut MssqlClient, instance: &str) -> Result<Lsn, tiberius::error::Error> {
    Ok(first(
        client,
        "SELECT start_lsn FROM cdc.change_tables WHERE capture_instance = @P1",
        &[&instance],
    )
    .await?
    .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()))
    .unwrap_or_default())
}

/// A key value as text, to resume a snapshot after it (bound back as text; SQL Server converts
/// it to the column's type).
fn key_text(v: &ColumnData<'_>) -> String {
    match cell(v) {
        Cell::Int(i) => i.to_string(),
        Cell::Text(t) | Cell::Decimal(t) => t,
        Cell::Date(y, m, d) => format!("{y:04}-{m:02}-{d:02}"),
        other => format!("{other:?}"),
    }
}

fn setup(source: &str, message: String) -> SourceError {
    SourceError::Setup {
        kind: KIND,
        source_name: source.to_owned(),
        message,
    }
}
