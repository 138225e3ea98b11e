//! Latency from commit to applied: `exhub-bench latency [--rate N --seconds N --archive
//! sqlite|postgres]`. The exchange
//! runs (`exhub hub`, `exhub sink mirror`, `exhub source legacy` as three processes: MariaDB
//! binlog → hub → PostgreSQL sink) while single-row transactions are committed in the legacy
//! table at a steady `--rate` per second (default 1,000) for `--seconds` (default 60). A row's
//! latency is from its COMMIT returning to the poll that first sees it in the target table
//! (polled every millisecond by primary key: which of the committed rows not yet seen are
//! there; rows arrive in commit order).
//!
//! The last line is `RESULT latency_p50_ms=… latency_p95_ms=… latency_p99_ms=…
//! latency_max_ms=… rate_per_s=…`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use exhub_schemas::time::unix_micros_now;
use sqlx::Connection as _;

use crate::cdc::{Bench, Legacy, MYSQL, POSTGRES, insert, sql};
use crate::procs::Flags;

/// Runs the benchmark with `--rate N --seconds N`.
pub async fn run(flags: Flags) -> Result<()> {
    let rate: u64 = flags.get("rate", 1_000)?;
    let seconds: u64 = flags.get("seconds", 60)?;
    let archive: String = flags.get("archive", "sqlite".to_owned())?;
    flags.done(&["rate", "seconds", "archive"])?;
    if rate == 0 || seconds == 0 {
        bail!("--rate and --seconds must be more than 0");
    }
    let bench = Bench::create(Legacy::Mysql, 2, &archive).await?;
    let result = measure(&bench, rate, seconds).await;
    bench.cleanup().await;
    result
}

async fn measure(bench: &Bench, rate: u64, seconds: u64) -> Result<()> {
    let mut procs = [
        bench.spawn(&["hub"], "hub.log")?,
        bench.spawn(&["sink", "mirror"], "sink.log")?,
        bench.spawn(&["source", "legacy"], "source.log")?,
    ];
    procs[2]
        .wait_log(Legacy::Mysql.streaming(), Duration::from_secs(60))
        .await?;
    let mut target = sqlx::PgConnection::connect(&format!("{POSTGRES}/{}", bench.name))
        .await
        .context("the PostgreSQL target")?;
    // A first row through every hop (connections up, queues declared) before the clock runs.
    let mut legacy = sqlx::MySqlConnection::connect(&format!("{MYSQL}/{}", bench.name))
        .await
        .context("the MariaDB legacy database")?;
    sql(insert(Legacy::Mysql, 0, 1)).execute(&mut legacy).await?;
    wait_count(&mut target, 1, Duration::from_secs(60)).await?;

    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut committed_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, i64)>();
    // The writer: one single-row transaction every `interval`, on schedule (late ones are
    // committed at once, so the schedule catches up).
    let writer = tokio::spawn(async move {
        let start = Instant::now();
        for n in 1..=total {
            let due = start + interval.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
            sql(insert(Legacy::Mysql, n, 1)).execute(&mut legacy).await?;
            if tx.send((Instant::now(), unix_micros_now())).is_err() {
                break;
            }
        }
        anyhow::Ok(start.elapsed())
    });
    let mut committed: Vec<Instant> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    // Wall-clock µs of each row's commit and of the poll that saw it applied, for the split at
    // the hub's archive (whose `received_at` is wall-clock µs too).
    let mut committed_wall: Vec<i64> = Vec::with_capacity(committed.capacity());
    let mut applied_wall: Vec<i64> = Vec::with_capacity(committed.capacity());
    // Row n's key, worked out before the clock runs.
    let ids: Vec<String> = (1..=total).map(exhub_schemas::samples::taxpayer_id).collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(committed.capacity());
    let mut applied: u64 = 0;
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    while applied < total {
        while let Ok((at, wall)) = committed_rx.try_recv() {
            committed.push(at);
            committed_wall.push(wall);
        }
        // Which of the committed rows not yet seen are in the target: by primary key, so
        // that the poll costs PostgreSQL index lookups, not a scan of a growing table (a
        // `count(*)` every millisecond took a core of its own and slowed what it measured).
        // Rows 1.. are the measured ones (row 0 was the warm-up) and arrive in commit order.
        // A window of the next few: a poll stays cheap however far behind the target is.
        let next = usize::try_from(applied)?;
        let waiting = &ids[next..committed.len().min(next + 64)];
        let present: std::collections::HashSet<String> = if waiting.is_empty() {
            Default::default()
        } else {
            sqlx::query_scalar("SELECT taxpayer_id FROM tax_registration WHERE taxpayer_id = ANY($1)")
                .bind(waiting)
                .fetch_all(&mut target)
                .await?
                .into_iter()
                .collect()
        };
        let now = Instant::now();
        let mut all_there = !waiting.is_empty();
        for id in waiting {
            if !present.contains(id) {
                all_there = false;
                break;
            }
            latencies.push(now.duration_since(committed[usize::try_from(applied)?]));
            applied_wall.push(unix_micros_now());
            applied += 1;
        }
        if now > deadline {
            bail!("only {applied} of {total} rows applied in time");
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if !all_there {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let wrote = writer.await??;
    for p in procs.iter_mut() {
        p.stop();
    }
    println!("  hub:");
    procs[0].print_stages()?;
    latencies.sort();
    let at = |q: f64| quantile(&latencies, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let achieved = total as f64 / wrote.as_secs_f64();
    println!(
        "{total} single-row transactions at {achieved:.0}/s (asked {rate}/s): commit → applied p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50),
        at(0.95),
        at(0.99),
        at(1.0)
    );
    match split(bench, &ids, &committed_wall, &applied_wall).await {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("the split at the archive could not be read: {e:#}"),
    }
    println!(
        "RESULT latency_p50_ms={:.1} latency_p95_ms={:.1} latency_p99_ms={:.1} latency_max_ms={:.1} rate_per_s={achieved:.0}",
        at(0.50),
        at(0.95),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Where the time goes, split at the hub's archive: from commit to the hub storing the row's
/// document (the source, the broker, the hub's queue and gate), and from there to the row
/// applied (the copy's publication, the broker, the sink). Reads each document's
/// `received_at` from the archive.
async fn split(bench: &Bench, ids: &[String], committed: &[i64], applied: &[i64]) -> Result<String> {
    let row_of: std::collections::HashMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("taxpayer_id={id}"), i))
        .collect();
    let archive = exhub_hub::archive::Archive::open(&bench.archive).await?;
    let (mut upstream, mut downstream) = (Vec::new(), Vec::new());
    let mut after: Option<(i64, String)> = None;
    loop {
        let page = archive
            .search(
                &exhub_hub::archive::Query::default(),
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                5000,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.id.clone()));
        for r in &page {
            if let Some(&i) = row_of.get(&r.key)
                && i < applied.len()
            {
                upstream.push(r.received_at - committed[i]);
                downstream.push(applied[i] - r.received_at);
            }
        }
    }
    archive.close().await;
    upstream.sort_unstable();
    downstream.sort_unstable();
    let ms = |v: &[i64], q: f64| quantile(v, q).map_or(f64::NAN, |us| *us as f64 / 1000.0);
    Ok(format!(
        "split at the hub's archive ({} rows): commit → archived p50 {:.1} ms, p99 {:.1} ms; archived → applied p50 {:.1} ms, p99 {:.1} ms",
        upstream.len(),
        ms(&upstream, 0.5),
        ms(&upstream, 0.99),
        ms(&downstream, 0.5),
        ms(&downstream, 0.99)
    ))
}

/// The `q` quantile (0.0–1.0) of sorted values, by nearest rank; `None` when there are none.
fn quantile<T>(sorted: &[T], q: f64) -> Option<&T> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize)
}

/// Waits until the target holds `n` rows.
async fn wait_count(target: &mut sqlx::PgConnection, n: i64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM tax_registration")
            .fetch_one(&mut *target)
            .await?;
        if count >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the first row did not arrive within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
