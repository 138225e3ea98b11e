//! # exhub-postgres — the PostgreSQL source adapter
//!
//! Reads a legacy PostgreSQL database through its own logical replication — a publication of
//! the mapped tables, a logical slot with the built-in `pgoutput` plugin — and publishes every
//! mapped row as an exchange document, like the MySQL source does with the binlog: same
//! mapping, same documents, same delivery contract (the slot's confirmed position moves only
//! past documents the broker confirmed). Nothing is written to the legacy tables.
//!
//! - [`config`]: its routes.toml options, their check, building its source and sink;
//! - [`sql`]: SQL and replication commands the source sends;
//! - [`source`]: slot and publication handling, the snapshot, streaming, slot lag;
//! - [`values`]: PostgreSQL text values → cells, by type;
//! - [`tls`]: the replication connection's TLS, the same as the queries'.

pub mod config;
pub mod source;
pub mod sql;
pub mod tls;
pub mod values;

pub use source::{PgError, PostgresSource, SourceError, SourceSettings};
