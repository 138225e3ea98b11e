//! # exhub-sink — applying documents to a subscriber's database
//!
//! A database subscriber consumes its queue in batches and applies each batch to its tables in
//! one transaction — upsert by key for `upsert` and `snapshot`, delete for `delete` — and only
//! after the commit acknowledges the messages. The algorithm is here ([`apply`]); each
//! database speaks it through a [`Target`]: one code path serves PostgreSQL and MySQL/MariaDB
//! ([`SqlTarget`], sqlx `Any`, a few SQL strings per [`dialect`]); SQL Server's target lives in
//! `exhub-mssql` (tiberius, `MERGE`; not verified against a real server).
//!
//! **Effectively-once.** Delivery is at-least-once, so the same document may come twice, and
//! after a source restart an older version of a row may come after a newer one. The sink keeps,
//! in the target database and in the same transaction as the data, the source position of the
//! last version applied per (source, table, key) — table `exhub_applied`. A document whose
//! position is not newer than the recorded one changes nothing. Per key rather than per source,
//! because a resumed snapshot and the stream that follows it interleave positions across keys
//! (see ARCHITECTURE.md).
//!
//! A document the target refuses (a constraint, a type) goes to the subscriber's DLQ with the
//! database's error; the rest of its batch is applied.

pub mod apply;
pub mod dialect;
mod run;

pub use apply::{ApplyError, SqlTarget, Target};
pub use run::{DbSink, SinkError, SinkSettings, TableTarget};

use exhub_connect::adapter::Kind;
use futures_util::future::BoxFuture;

/// A kind that can be a database sink: it connects to a subscriber's database as a
/// [`Target`] for its tables.
pub trait SinkAdapter: Kind {
    /// Connects to `url` (already checked), creates the bookkeeping table when missing, and
    /// checks every table of `tables` can be written.
    fn connect<'a>(&'a self, url: &'a str, tables: &'a [TableTarget])
    -> BoxFuture<'a, Result<Box<dyn Target>, String>>;
}
