//! `exhub stats`: statistics (统计) from the archive per department, doc type, subscriber or
//! day, as a table, CSV or JSON.

use std::path::Path;

use anyhow::{Context as _, Result};
use exhub_hub::archive::Archive;
use exhub_hub::stats::{By, COLUMNS, aggregate, cells, csv};
use exhub_schemas::time::unix_micros_now;

use super::load;

/// How `exhub stats` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// Comma-separated, with a header line (a spreadsheet's).
    Csv,
    /// One JSON array of rows.
    Json,
}

/// Prints the statistics of `[since, until)` (µs; until defaults to now) per `by`, with days
/// at `offset_secs` east of UTC.
pub async fn stats(
    path: &Path,
    since: i64,
    until: Option<i64>,
    by: By,
    offset_secs: i32,
    format: Format,
) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let archive = Archive::open(config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", config.hub.archive))?;
    let until = until.unwrap_or_else(|| unix_micros_now() + 1);
    let facts = archive
        .stats_facts(since, until, &config.hub.topology().hub_dlq(), &config.orgs_by_user())
        .await;
    archive.close().await;
    let rows = aggregate(&facts?, by, offset_secs);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Csv => print!("{}", csv(&rows)),
        Format::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
            let width = |i: usize| {
                cells
                    .iter()
                    .map(|c| c[i].chars().count())
                    .chain([COLUMNS[i].len()])
                    .max()
                    .unwrap_or(0)
            };
            let widths: Vec<usize> = (0..COLUMNS.len()).map(width).collect();
            let line = |c: &[String]| {
                c.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            println!("{}", line(&header).trim_end());
            for c in &cells {
                println!("{}", line(c).trim_end());
            }
            if rows.is_empty() {
                eprintln!("nothing archived in that time");
            }
        }
    }
    Ok(())
}
