//! # exhub-mssql — the SQL Server adapter (not verified against a real SQL Server)
//!
//! SQL Server's own change data capture is the change log: the capture job copies committed
//! changes of CDC-enabled tables into change tables, read through
//! `cdc.fn_cdc_get_all_changes_<capture_instance>`. Nothing is written to business tables.
//!
//! - [`source`]: CDC checks, snapshot, polling the capture instances ([`MssqlSource`]);
//! - [`config`]: its routes.toml options, their check, building its source and sink;
//! - [`sink`]: the sink's target (MERGE through tiberius);
//! - [`connect`]: the URL with its TLS settings → a tiberius client;
//! - [`lsn`]: log sequence numbers (`binary(10)`): parsing, order, increment, and the source's
//!   checkpoint position (commit LSN, rows done in that transaction);
//! - [`values`]: tiberius values → database-neutral cells, for every SQL Server type mapped;
//! - [`sql`]: the SQL text the adapter sends (CDC checks, change queries, snapshot chunks, the
//!   sink's MERGE and bookkeeping), built for given tables and tested as text.
//!
//! No SQL Server can run on the machines this project is built on: everything here is tested
//! without a server (see docs/adapters/mssql.md).

pub mod config;
pub mod connect;
pub mod lsn;
pub mod sink;
pub mod source;
pub mod sql;
pub mod values;

pub use source::{MssqlError, MssqlSource, SourceError, SourceSettings};
