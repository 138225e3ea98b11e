//! Latency from commit to applied: `exhub-bench latency [--rate N --seconds N --archive
//! sqlite|postgres]`. The exchange
//! runs (`exhub hub`, `exhub sink mirror`, `exhub source legacy` as three processes: MariaDB
//! binlog → hub → PostgreSQL sink) while single-row transactions are committed in the legacy
//! table at a steady `--rate` per second (default 1,000) for `--seconds` (default 60). A row's
//! latency is from its COMMIT returning to the notification that the sink's transaction
//! applying it committed (a trigger on the target table, the benchmark's own, calls
//! `pg_notify`; each row is timed on its own, in whatever order rows arrive). A split in four
//! parts follows, read from the hub's archive and the sink's bookkeeping ([`split`]).
//!
//! The last line is `RESULT latency_p50_ms=… latency_p95_ms=… latency_p99_ms=…
//! latency_max_ms=… rate_per_s=…`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use exhub_schemas::time::unix_micros_now;
use sqlx::Connection as _;

use crate::cdc::{Bench, Legacy, MYSQL, POSTGRES, insert, sql};
use crate::procs::Flags;

/// The trigger function, trigger and notification channel that announce applied rows.
const APPLIED: &str = "exhub_bench_applied";

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
    let target_url = format!("{POSTGRES}/{}", bench.name);
    let mut target = sqlx::PgConnection::connect(&target_url)
        .await
        .context("the PostgreSQL target")?;
    // Each applied row announces itself when its transaction commits: a trigger on the
    // benchmark's own target table, and a listener here. No polling: a poll every millisecond
    // took half a core of PostgreSQL on a machine with none to spare, and delayed what it
    // measured by up to a second.
    sql(format!(
        "CREATE FUNCTION {APPLIED}() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_notify('{APPLIED}', NEW.taxpayer_id); RETURN NULL; END $$; \
         CREATE TRIGGER {APPLIED} AFTER INSERT OR UPDATE ON tax_registration \
         FOR EACH ROW EXECUTE FUNCTION {APPLIED}()"
    ))
    .execute(&mut target)
    .await?;
    let mut listener = sqlx::postgres::PgListener::connect(&target_url).await?;
    listener.listen(APPLIED).await?;
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
    // Wall-clock µs of each row's commit, for the split (the archive's and the sink's times
    // are wall-clock µs too).
    let mut committed_wall: Vec<i64> = Vec::with_capacity(committed.capacity());
    // When each row's notification came: monotonic, and wall-clock µs.
    let mut seen: Vec<Option<(Instant, i64)>> = vec![None; usize::try_from(total)?];
    // Row n's key, worked out before the clock runs; rows are measured from 1 (row 0 was the
    // warm-up).
    let ids: Vec<String> = (1..=total).map(exhub_schemas::samples::taxpayer_id).collect();
    let row_of: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut seen_count = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 120);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    while seen_count < seen.len() {
        tokio::select! {
            Some((at, wall)) = committed_rx.recv() => {
                committed.push(at);
                committed_wall.push(wall);
            }
            n = listener.recv() => {
                let now = (Instant::now(), unix_micros_now());
                if let Some(&i) = row_of.get(n?.payload())
                    && seen[i].is_none()
                {
                    seen[i] = Some(now);
                    seen_count += 1;
                }
            }
            _ = check.tick() => {
                if tokio::time::Instant::now() > deadline {
                    bail!("only {seen_count} of {total} rows applied in time");
                }
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
            }
        }
    }
    // The writer's last sends may still be queued.
    while let Ok((at, wall)) = committed_rx.try_recv() {
        committed.push(at);
        committed_wall.push(wall);
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(seen.len());
    let mut applied_wall: Vec<i64> = Vec::with_capacity(seen.len());
    for (at, s) in committed.iter().zip(&seen) {
        let (seen_at, wall) = s.context("a row counted as seen has no time")?;
        latencies.push(seen_at.duration_since(*at));
        applied_wall.push(wall);
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

/// Where the time goes, in four parts, read from the hub's archive and the sink's bookkeeping:
/// - commit → archived: the source, the broker, the hub's queue and gate, up to the hub
///   starting the store of the row's document (`received_at`);
/// - archived → confirmed: the store (waiting for the archive's connection, the durable
///   commit), the copy's publication until the broker confirmed it, and the confirm's own
///   write (the batch's `confirmed_at`);
/// - confirmed → sink's transaction: the subscriber's queue, the sink taking and decoding the
///   copy, up to the start of the transaction that applies it (`exhub_applied.applied_at`,
///   PostgreSQL's `now()`);
/// - sink's transaction → seen: the transaction and its commit, and the notification.
///
/// Reads the archive's and the target's tables directly (a benchmark may know the schema; the
/// exchange has no per-document times to offer).
async fn split(bench: &Bench, ids: &[String], committed: &[i64], applied: &[i64]) -> Result<String> {
    use sqlx::Row as _;
    let row_of: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    sqlx::any::install_default_drivers();
    let mut archive = sqlx::AnyConnection::connect(&bench.archive).await?;
    let hub_rows = sqlx::query(
        "SELECT d.doc_key, d.received_at, b.confirmed_at FROM exhub_documents d \
         JOIN exhub_batches b ON b.id = d.batch_id",
    )
    .fetch_all(&mut archive)
    .await?;
    archive.close().await?;
    let mut target = sqlx::PgConnection::connect(&format!("{POSTGRES}/{}", bench.name)).await?;
    let sink_rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT doc_key, (extract(epoch FROM applied_at) * 1000000)::bigint FROM exhub_applied")
            .fetch_all(&mut target)
            .await?;
    target.close().await?;
    let began: std::collections::HashMap<&str, i64> = sink_rows.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let mut parts: [Vec<i64>; 4] = Default::default();
    for r in &hub_rows {
        let key: String = r.try_get(0)?;
        let received: i64 = r.try_get(1)?;
        let confirmed: Option<i64> = r.try_get(2)?;
        let id = key.strip_prefix("taxpayer_id=").unwrap_or_default();
        if let (Some(&i), Some(confirmed), Some(&began)) = (row_of.get(id), confirmed, began.get(id))
            && i < applied.len()
        {
            parts[0].push(received - committed[i]);
            parts[1].push(confirmed - received);
            parts[2].push(began - confirmed);
            parts[3].push(applied[i] - began);
        }
    }
    for v in &mut parts {
        v.sort_unstable();
    }
    let ms = |v: &[i64], q: f64| quantile(v, q).map_or(f64::NAN, |us| *us as f64 / 1000.0);
    let names = [
        "commit → archived",
        "archived → confirmed",
        "confirmed → sink's transaction",
        "sink's transaction → seen",
    ];
    let text: Vec<String> = names
        .iter()
        .zip(&parts)
        .map(|(name, v)| format!("{name} p50 {:.1} ms, p99 {:.1} ms", ms(v, 0.5), ms(v, 0.99)))
        .collect();
    Ok(format!("split ({} rows): {}", parts[0].len(), text.join("; ")))
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
