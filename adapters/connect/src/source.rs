//! What every source adapter shares besides its [`outbox`](crate::outbox): the shape of its
//! errors, and its run loop — passing failures (the database or RabbitMQ restarting) are
//! retried with backoff from the checkpoint; anything else stops the source with its cause.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::mapping::SnapshotMode;
use crate::outbox::SourceIdentity;
use crate::publisher::Declare;
use crate::{AmqpError, Backoff, CheckpointError, Publisher, TableMapping, Topology};

/// What every source is told, whatever its database (built by the `exhub` binary from
/// routes.toml; each source's settings add what is its own).
#[derive(Debug, Clone)]
pub struct SourceCommon {
    /// The source's name (`header.sender.system`).
    pub name: String,
    /// The publishing org.
    pub org: String,
    /// The legacy database's URL.
    pub url: String,
    /// Snapshot mode.
    pub snapshot: SnapshotMode,
    /// Tables and their mappings.
    pub tables: Vec<TableMapping>,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// RabbitMQ URL (the org's own login).
    pub amqp: String,
    /// The exchange's AMQP names.
    pub topology: Topology,
    /// The AMQP user in that URL (`user_id` of every message).
    pub amqp_user: String,
    /// The org's signing key: every message is signed with it when there is one.
    pub signer: Option<std::sync::Arc<crate::sign::SigningKey>>,
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
        Retry::new(&self.name, &self.amqp, &self.topology)
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
