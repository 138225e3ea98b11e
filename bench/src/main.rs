//! `exhub-bench`: benchmarks that print figures, against the real services and the real `exhub`
//! binary next to this one (build both with `--release`).
//!
//! - `exhub-bench hub [--docs N --batch N --workers N]`: the hub against a raw relay.
//! - `exhub-bench archive [--docs N --batch N --writers N --archive sqlite|postgres]`: the
//!   archive's store and confirm alone, as hub workers call them, no broker.
//! - `exhub-bench cdc-mysql [--tx N --rows N --workers N --archive sqlite|postgres]`: a MariaDB
//!   binlog backlog through source → hub → PostgreSQL sink;
//! - `exhub-bench cdc-postgres [same flags]`: a PostgreSQL slot backlog through source → hub →
//!   MariaDB sink;
//! - `exhub-bench capture-mysql`, `capture-postgres` [same flags]: the source alone, from the
//!   backlog to every document confirmed by the broker (the figure beside a capture-only CDC
//!   engine's);
//! - `exhub-bench latency [--rate N --seconds N]`: commit → applied latency of a steady stream of
//!   single-row transactions (MariaDB → PostgreSQL), p50/p95/p99/max.
//!
//! Each prints one `RESULT name=value …` line last. BENCHMARKS.md has the commands and figures.

mod archive;
mod cdc;
mod hub;
mod latency;
mod procs;

use anyhow::{Result, bail};

use crate::procs::Flags;

#[tokio::main]
async fn main() -> Result<()> {
    // The library's own warnings (a publisher retrying, a connection lost) to stderr, so that a
    // run that stalls says why; `RUST_LOG` as for `exhub`.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let flags = Flags::parse(args)?;
    match which.as_str() {
        "hub" => hub::run(flags).await,
        "archive" => archive::run(flags).await,
        "cdc-mysql" => cdc::run(cdc::Legacy::Mysql, flags).await,
        "cdc-postgres" => cdc::run(cdc::Legacy::Postgres, flags).await,
        "capture-mysql" => cdc::capture(cdc::Legacy::Mysql, flags).await,
        "capture-postgres" => cdc::capture(cdc::Legacy::Postgres, flags).await,
        "latency" => latency::run(flags).await,
        other => bail!(
            "unknown benchmark `{other}` (known: hub, archive, cdc-mysql, cdc-postgres, capture-mysql, capture-postgres, latency)"
        ),
    }
}
