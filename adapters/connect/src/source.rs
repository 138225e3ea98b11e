//! The source contract: what a database's change-log reader implements ([`Source`]), what
//! every source is told ([`SourceCommon`]), how its errors are told apart ([`DriverError`],
//! [`SourceError`]). The one loop that drives every source — retries, the snapshot state
//! machine, checkpoints, the outbox — is [`crate::runner`].
//!
//! # Delivery contract
//!
//! A source hands rows to the runner; the runner publishes them with the broker's confirms and
//! moves the checkpoint only past rows the broker confirmed. After a crash, a restart or a lost
//! connection the source resumes from the checkpoint, so a row may be published twice — never
//! lost. Sinks keep the newest version of each key by the order of `(position, seq)` (see
//! [`crate::mapping::order_key`]), which makes a second copy harmless. A source therefore must:
//!
//! - label every row with a [`RowPosition`](crate::mapping::RowPosition) whose order is the
//!   order of the database's commits: the position of its transaction, then its sequence in it
//!   (from 1). Snapshot rows carry the snapshot's position and sequence 0, so that every change
//!   streamed after it wins. A kind whose positions `order_key` does not parse must write them
//!   so that their text sorts bytewise (fixed width, leading zeros); `order_key_sorts` checks
//!   an adapter's positions in its unit tests;
//! - call [`Emit::boundary`](crate::runner::Emit::boundary) only with a position where a
//!   reader may resume: every row before it was given to the runner;
//! - read its snapshot in a consistent read that starts no earlier than the position it
//!   returns from [`Source::begin_snapshot`], so that streaming from there misses nothing.

use std::future::Future;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::mapping::SnapshotMode;
use crate::outbox::SourceIdentity;
use crate::publisher::Declare;
use crate::runner::Emit;
use crate::{AmqpError, Backoff, Cell, CheckpointError, Mapper, Publisher, TableMapping, Topology};

/// A position in a database's change log: where a reader may resume (kept in the checkpoint),
/// shown in logs and, as text, on snapshot rows.
pub trait Position:
    Clone + PartialEq + std::fmt::Display + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T: Clone + PartialEq + std::fmt::Display + Serialize + DeserializeOwned + Send + Sync + 'static> Position for T {}

/// A key column's value, kept in the checkpoint to resume a chunked snapshot after it (a JSON
/// number or string; `{"Int": 5}` as earlier MySQL checkpoints wrote it is read too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged, from = "KeyValueForm")]
pub enum KeyValue {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer beyond `i64`.
    UInt(u64),
    /// Anything else, as the database writes it as text.
    Text(String),
}

/// Every form a kept key value was written in.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum KeyValueForm {
    Int(i64),
    UInt(u64),
    Text(String),
    Tagged(TaggedKeyValue),
}

/// Earlier MySQL checkpoints' form.
#[derive(serde::Deserialize)]
enum TaggedKeyValue {
    Int(i64),
    UInt(u64),
    Text(String),
}

impl From<KeyValueForm> for KeyValue {
    fn from(form: KeyValueForm) -> Self {
        match form {
            KeyValueForm::Int(i) | KeyValueForm::Tagged(TaggedKeyValue::Int(i)) => KeyValue::Int(i),
            KeyValueForm::UInt(u) | KeyValueForm::Tagged(TaggedKeyValue::UInt(u)) => KeyValue::UInt(u),
            KeyValueForm::Text(t) | KeyValueForm::Tagged(TaggedKeyValue::Text(t)) => KeyValue::Text(t),
        }
    }
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Int(i) => write!(f, "{i}"),
            KeyValue::UInt(u) => write!(f, "{u}"),
            KeyValue::Text(t) => f.write_str(t),
        }
    }
}

/// One row of a snapshot chunk.
#[derive(Debug)]
pub struct SnapshotRow {
    /// The row's key, in the mapping's key order (the next chunk starts after the last one).
    pub key: Vec<KeyValue>,
    /// The mapped columns' values, in the order of [`Mapper::columns`].
    pub cells: Vec<Cell>,
}

/// A mapped table, as the source found it when it connected.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Its mapping.
    pub mapper: Mapper,
    /// The server's row estimate, for the snapshot's progress bar.
    pub estimated_rows: u64,
}

/// A connected attempt: the source's session, the database's name and the mapped tables (in
/// the order of the mapping, which is what `table` indexes mean everywhere).
pub struct Opened<S> {
    /// The adapter's own connection state.
    pub session: S,
    /// The database's name (`header.source.db`).
    pub db: String,
    /// The mapped tables.
    pub tables: Vec<TableInfo>,
    /// Whether the change log the source reads was created anew by this attempt (PostgreSQL:
    /// its slot): a snapshot in progress was labelled with the old log's positions, so it is
    /// void and starts over.
    pub log_created: bool,
}

/// Why a source stopped, with the adapter's driver error.
pub type SourceResult<T, E> = Result<T, SourceError<E>>;

/// A database's change-log reader. The runner ([`crate::runner::run`]) calls, per attempt:
/// [`open`](Source::open); when a snapshot is due [`begin_snapshot`](Source::begin_snapshot),
/// [`snapshot_chunk`](Source::snapshot_chunk) until every table is read, and
/// [`end_snapshot`](Source::end_snapshot); [`current`](Source::current) when there is neither
/// a checkpoint nor a snapshot; then [`stream`](Source::stream) until cancelled. See the
/// module's delivery contract.
pub trait Source: Send + Sync {
    /// `header.source.kind`: `mysql`, `postgres`, `mssql`.
    const KIND: &'static str;
    /// Where a reader may resume.
    type Position: Position;
    /// The database driver's error.
    type Error: DriverError;
    /// What one attempt holds (connections, the tables' descriptions).
    type Session: Send;

    /// What every source is told.
    fn common(&self) -> &SourceCommon;

    /// Connects, checks the server, its settings and grants and the mapped tables (naming the
    /// fix of whatever is missing), and prepares reading. `checkpoint` is the last confirmed
    /// position (`None` on a first start or after a reset); `snapshot` whether a snapshot is
    /// due in this attempt.
    fn open(
        &self,
        checkpoint: Option<&Self::Position>,
        snapshot: bool,
    ) -> impl Future<Output = SourceResult<Opened<Self::Session>, Self::Error>> + Send;

    /// Starts the snapshot's consistent read; returns the position streaming continues from
    /// once it is done. `resume` is that position when an interrupted snapshot resumes: the
    /// read is new, but the position stays — return `resume`, extended where the source keeps a
    /// position per table and a table was mapped since (SQL Server).
    fn begin_snapshot(
        &self,
        session: &mut Self::Session,
        resume: Option<&Self::Position>,
    ) -> impl Future<Output = SourceResult<Self::Position, Self::Error>> + Send;

    /// Up to `limit` rows of table `table` in key order, after key `after`.
    fn snapshot_chunk(
        &self,
        session: &mut Self::Session,
        table: usize,
        after: Option<&[KeyValue]>,
        limit: usize,
    ) -> impl Future<Output = SourceResult<Vec<SnapshotRow>, Self::Error>> + Send;

    /// Ends the snapshot's read.
    fn end_snapshot(&self, session: &mut Self::Session) -> impl Future<Output = SourceResult<(), Self::Error>> + Send;

    /// The log's current position: where streaming starts with neither a checkpoint nor a
    /// snapshot (snapshot mode `never`).
    fn current(
        &self,
        session: &mut Self::Session,
    ) -> impl Future<Output = SourceResult<Self::Position, Self::Error>> + Send;

    /// Reads the change log from `from` until `cancel`, handing rows and resumable positions to
    /// `emit`, and calling [`Emit::tick`] after each step so that the runner publishes and
    /// checkpoints.
    fn stream(
        &self,
        session: Self::Session,
        from: Self::Position,
        emit: &mut Emit<'_, Self::Position>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = SourceResult<(), Self::Error>> + Send;

    /// Retires the source: releases what it holds on the server (PostgreSQL: its slot and
    /// publication), then forgets the checkpoint. A kind that holds nothing refuses, so that
    /// the checkpoint is not lost by mistake (`--reset` forgets it on purpose).
    fn retire(&self) -> impl Future<Output = SourceResult<(), Self::Error>> + Send {
        async {
            Err(SourceError::Setup {
                kind: Self::KIND,
                source_name: self.common().name.clone(),
                message: "this kind holds nothing on the server to release (--drop-slot is for PostgreSQL \
                          sources; --reset forgets the checkpoint)"
                    .into(),
            })
        }
    }
}

/// What every source is told, whatever its database (built by the `exhub` binary from
/// routes.toml; each source's settings add what is its own).
#[derive(Debug, Clone)]
pub struct SourceCommon {
    /// The source's name (`header.sender.system`).
    pub name: String,
    /// The publishing org.
    pub org: String,
    /// The legacy database's URL.
    pub url: crate::secret::SecretUrl,
    /// Snapshot mode.
    pub snapshot: SnapshotMode,
    /// Tables and their mappings.
    pub tables: Vec<TableMapping>,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// RabbitMQ URL (the org's own login).
    pub amqp: crate::secret::SecretUrl,
    /// The exchange's AMQP names.
    pub topology: Topology,
    /// The AMQP user in that URL (`user_id` of every message).
    pub amqp_user: String,
    /// The org's signing key: every message is signed with it when there is one.
    pub signer: Option<std::sync::Arc<crate::sign::SigningKey>>,
    /// The time zone of the database's zone-less date-times, seconds east of UTC (`None`:
    /// the kind's default — MySQL the server's, others UTC).
    pub offset_secs: Option<i32>,
    /// How often it reports its status to the hub ([`crate::status`]).
    pub heartbeat: std::time::Duration,
}

impl SourceCommon {
    /// Who the source publishes as, reading database `db` of kind `kind` (`mysql`, …).
    pub fn identity(&self, kind: &'static str, db: &str) -> SourceIdentity {
        SourceIdentity {
            name: self.name.clone(),
            org: self.org.clone(),
            kind,
            db: db.to_owned(),
            amqp_user: self.amqp_user.clone(),
            topology: self.topology.clone(),
            signer: self.signer.clone(),
        }
    }

    /// Forgets the checkpoint: the next start takes a new snapshot (mode `initial`) or starts
    /// from the database's current position (mode `never`).
    pub fn forget_checkpoint(&self) -> Result<(), CheckpointError> {
        tracing::info!(source = %self.name, checkpoint = %self.checkpoint.display(), "checkpoint removed");
        crate::CheckpointStore::new(self.checkpoint.clone()).clear()
    }

    /// The run loop of this source.
    pub fn retry(&self) -> Retry {
        Retry::new(&self.name, self.amqp.expose(), &self.topology)
    }
}

/// A database driver's error, as a source sees it.
pub trait DriverError: std::error::Error + Send + Sync + 'static {
    /// Whether retrying later may help (a lost connection, a server restarting).
    fn is_passing(&self) -> bool;
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError<E: DriverError> {
    /// The server, its settings or the tables cannot serve the source; the message says what
    /// is wrong and how to fix it.
    #[error("{kind} source {source_name}: {message}")]
    Setup {
        /// `MySQL`, `PostgreSQL`, `SQL Server`.
        kind: &'static str,
        /// The source.
        source_name: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A mapping cannot be used.
    #[error(transparent)]
    Mapper(#[from] crate::mapping::MapperError),
    /// The checkpoint file.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// RabbitMQ refused for good.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The database failed (retried when passing).
    #[error("{kind} source {source_name}: {error}")]
    Driver {
        /// `MySQL`, `PostgreSQL`, `SQL Server`.
        kind: &'static str,
        /// The source.
        source_name: String,
        /// The driver's error.
        error: E,
    },
}

impl<E: DriverError> SourceError<E> {
    /// Whether retrying later may help.
    pub fn is_passing(&self) -> bool {
        match self {
            SourceError::Driver { error, .. } => error.is_passing(),
            SourceError::Amqp(e) => e.is_passing(),
            _ => false,
        }
    }
}

/// A source's run loop state: the publisher that outlives each attempt (so what was not
/// confirmed is republished) and the backoff between attempts.
///
/// ```ignore
/// let mut retry = Retry::new(name, amqp, topology);
/// loop {
///     let result = self.run_once(retry.publisher(), cancel).await;
///     if !retry.again(name, result, cancel).await? {
///         return Ok(());
///     }
/// }
/// ```
pub struct Retry {
    publisher: Publisher,
    backoff: Backoff,
}

impl Retry {
    /// The loop of source `name`, publishing to `topology`'s ingress through `amqp`.
    pub fn new(name: &str, amqp: &str, topology: &Topology) -> Retry {
        Retry {
            publisher: Publisher::new(
                amqp.to_owned(),
                format!("exhub-source-{name}"),
                Declare::Ingress(topology.clone()),
            ),
            backoff: Backoff::default(),
        }
    }

    /// The publisher for the next attempt.
    pub fn publisher(&mut self) -> &mut Publisher {
        &mut self.publisher
    }

    /// After an attempt: `Ok(true)` to run again (a passing failure, after the backoff),
    /// `Ok(false)` to stop cleanly (done or cancelled), `Err` to stop with the error.
    pub async fn again<E: DriverError>(
        &mut self,
        name: &str,
        result: Result<(), SourceError<E>>,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError<E>> {
        match result {
            Ok(()) | Err(SourceError::Amqp(AmqpError::Cancelled)) => return Ok(false),
            Err(e) if e.is_passing() => {
                tracing::warn!(source = %name, error = %e, "source interrupted; resuming from the checkpoint");
            }
            Err(e) => return Err(e),
        }
        Ok(self.backoff.wait(cancel).await.is_ok())
    }
}
