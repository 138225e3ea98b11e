//! # exhub-mysql — the MySQL/MariaDB source adapter
//!
//! Publishes the changes of a legacy MySQL or MariaDB database as exchange documents, reading
//! only what the server already writes: its binary log, as a replica does. Nothing is ever
//! written to the legacy database — no triggers, no extra columns, no signal tables.
//!
//! - [`source`]: snapshot, binlog streaming, checkpoints ([`MysqlSource`]);
//! - [`config`]: its routes.toml options, their check, building its source and sink;
//! - [`sql`]: every SQL text the source sends;
//! - [`cells`]: MySQL values → database-neutral cells;
//! - [`tls`]: TLS settings of a MySQL URL, one meaning for mysql_async and sqlx.
//!
//! Delivery contract: at-least-once. The checkpoint (a binlog position at a transaction
//! boundary) moves only once the broker confirmed every document before it; after a crash the
//! source re-reads from there and publishes the same documents with the same ids, which the hub
//! archives and routes once.
//!
//! Server requirements: `log_bin` on, `binlog_format=ROW`, `binlog_row_image=FULL`,
//! `binlog_row_metadata=FULL` (MariaDB 10.5+, MySQL 8.0.1+). Grants: `REPLICATION SLAVE`,
//! `REPLICATION CLIENT` (MariaDB 10.5+: `BINLOG MONITOR`) and `SELECT` on the mapped tables.

pub mod cells;
pub mod config;
pub mod source;
pub mod sql;
pub mod tls;

pub use source::{BinlogPos, MysqlError, MysqlSource, SourceError, SourceSettings};
