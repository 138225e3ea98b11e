//! `exhub stats`: statistics (统计) from the archive per department, doc type, subscriber or
//! day, as a table, CSV or JSON.

use std::path::Path;

use anyhow::{Context as _, Result};
use exhub_hub::archive::Archive;
use exhub_hub::stats::{By, Row, aggregate};
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

/// The columns of the table and the CSV, in order.
const COLUMNS: [&str; 8] = [
    "key",
    "documents",
    "refused",
    "routed",
    "applied",
    "refused_by_subscribers",
    "applied_p50_ms",
    "applied_p95_ms",
];

/// `--offset`: `+08:00`, `-05:00`, `Z` or `+00:00`, as seconds east of UTC.
pub fn parse_offset(text: &str) -> Result<i32, String> {
    let bad = || format!("{text:?} is not an offset like +08:00");
    if text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// `--since` / `--until`: a timestamp as written, or a plain date (2026-11-22) as its midnight
/// at `offset_secs` east of UTC, as µs since the epoch.
pub fn parse_time_at(text: &str, offset_secs: i32) -> Result<i64, String> {
    let plain_date = text.len() == 10 && !text.contains('T');
    let utc = super::parse_time(text)?;
    Ok(if plain_date {
        utc - i64::from(offset_secs) * 1_000_000
    } else {
        utc
    })
}

/// Midnight of today at `offset_secs` east of UTC, as µs since the epoch.
pub fn start_of_today(offset_secs: i32) -> i64 {
    const DAY: i64 = 86_400_000_000;
    let offset = i64::from(offset_secs) * 1_000_000;
    (unix_micros_now() + offset).div_euclid(DAY) * DAY - offset
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
        Format::Csv => {
            println!("{}", COLUMNS.join(","));
            for r in &rows {
                println!("{}", cells(r).iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
            }
        }
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

/// A row's cells, as [`COLUMNS`] names them: refusals as `reason:n` pairs, missing latencies
/// empty.
fn cells(r: &Row) -> Vec<String> {
    let refused: Vec<String> = r.refused.iter().map(|(reason, n)| format!("{reason}:{n}")).collect();
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
    vec![
        r.key.clone(),
        r.documents.to_string(),
        refused.join(" "),
        r.routed.to_string(),
        r.applied.to_string(),
        r.refused_by_subscribers.to_string(),
        ms(r.applied_p50_ms),
        ms(r.applied_p95_ms),
    ]
}

/// A CSV cell, quoted when it must be (RFC 4180).
fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_as_seconds_east_of_utc() {
        assert_eq!(parse_offset("+08:00"), Ok(28_800));
        assert_eq!(parse_offset("-05:30"), Ok(-19_800));
        assert_eq!(parse_offset("Z"), Ok(0));
        for bad in ["08:00", "+8", "+24:00", "+08:60", "", "+008:00"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plain_date_is_midnight_at_the_offset() {
        let utc = parse_time_at("2026-11-22", 0).unwrap();
        assert_eq!(parse_time_at("2026-11-22", 28_800), Ok(utc - 28_800_000_000));
        let written = "2026-11-22T08:00:00+08:00";
        assert_eq!(parse_time_at(written, 28_800), parse_time_at(written, 0));
        assert!(parse_time_at("22/11/2026", 0).is_err());
    }

    #[test]
    fn today_starts_at_local_midnight() {
        let start = start_of_today(28_800);
        let now = unix_micros_now();
        assert!(start <= now && now - start < 86_400_000_000);
        assert_eq!((start + 28_800_000_000) % 86_400_000_000, 0);
    }
}
