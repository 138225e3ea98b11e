//! Backlog catch-up from a legacy database's change log: `exhub-bench cdc-mysql` (the CTAIS
//! table in a fresh MariaDB database → a fresh PostgreSQL target) and `exhub-bench cdc-postgres`
//! (the commerce licence table in a fresh PostgreSQL database → a fresh MariaDB target), with
//! the real `exhub source`, `exhub hub` and `exhub sink` processes between them.
//!
//! 1. The source runs once on the empty table (snapshot, checkpoint or slot), and stops.
//! 2. While the exchange is stopped, `--tx` transactions of `--rows` inserted rows are committed
//!    (10 columns filled, about 200 bytes a row).
//! 3. Hub, sink and source start as separate processes; the clock runs from their start until
//!    the target table holds every row.
//!
//! `--tx 1 --rows 1000000` is the one-huge-transaction case: the source's peak RSS shows that
//! it streams a transaction instead of holding it.
//!
//! The last line is `RESULT cdc_<mysql|postgres>_events_per_s=… source_rss_mb=… hub_rss_mb=…
//! sink_rss_mb=…`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use exhub_connect::{Topology, amqp};
use sqlx::Connection as _;

use crate::procs::{Exhub, Flags, admin_url, routes_toml};

pub const MYSQL: &str = "mysql://root@127.0.0.1:3306";
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const CTAIS: &str = include_str!("../../examples/legacy/tax_ctais.sql");
const COMMERCE_MIRROR: &str = include_str!("../../examples/legacy/commerce_mirror.sql");
const SAIC: &str = include_str!("../../examples/legacy/commerce_saic.sql");
const TAX_MIRROR: &str = include_str!("../../examples/legacy/tax_mirror.sql");

/// Where the legacy table lives (the target is in the other database).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Legacy {
    /// CTAIS `nsr_djxx` in MariaDB → `tax_registration` in PostgreSQL.
    Mysql,
    /// `scjg_yyzz` in PostgreSQL → `business_license` in MariaDB.
    Postgres,
}

impl Legacy {
    fn name(self) -> &'static str {
        match self {
            Legacy::Mysql => "mysql",
            Legacy::Postgres => "postgres",
        }
    }

    /// What the source logs once it streams.
    pub fn streaming(self) -> &'static str {
        match self {
            Legacy::Mysql => "streaming the binlog",
            Legacy::Postgres => "streaming the slot",
        }
    }

    fn count_target(self) -> &'static str {
        match self {
            Legacy::Mysql => "SELECT count(*) FROM tax_registration",
            Legacy::Postgres => "SELECT count(*) FROM business_license",
        }
    }
}
/// Rows per INSERT statement.
const ROWS_PER_STATEMENT: u64 = 1_000;

/// Runs the benchmark from `legacy` with `--tx N --rows N --workers N --archive sqlite|postgres
/// --sign none|ed25519|sm2 --tls off|on|amqp,source,sink,archive` (signing: sources sign, the hub
/// verifies and signs copies, the sink verifies and signs receipts; TLS: every connection of
/// the exchange, or those named).
pub async fn run(legacy: Legacy, flags: Flags) -> Result<()> {
    measure(legacy, false, flags).await
}

/// Runs the capture-only benchmark from `legacy` (the source alone; same flags).
pub async fn capture(legacy: Legacy, flags: Flags) -> Result<()> {
    measure(legacy, true, flags).await
}

async fn measure(legacy: Legacy, capture: bool, flags: Flags) -> Result<()> {
    let tx: u64 = flags.get("tx", 200)?;
    let rows: u64 = flags.get("rows", 1_000)?;
    let workers: usize = flags.get("workers", 2)?;
    let archive: String = flags.get("archive", "sqlite".to_owned())?;
    let sign: String = flags.get("sign", "none".to_owned())?;
    let tls: String = flags.get("tls", "off".to_owned())?;
    flags.done(&["tx", "rows", "workers", "archive", "sign", "tls"])?;
    let bench = Bench::create(legacy, workers, &archive).await?;
    crate::procs::enable_signing(&bench.config, &sign)?;
    crate::procs::set_tls(&bench.config, &tls)?;
    let result = if capture {
        bench.capture(tx, rows).await
    } else {
        bench.measure(tx, rows).await
    };
    bench.cleanup().await;
    result
}

/// The databases, the scratch directory and the routes.toml of one run.
pub struct Bench {
    legacy: Legacy,
    /// The databases' name (and the AMQP prefix).
    pub name: String,
    dir: PathBuf,
    /// Its routes.toml.
    pub config: PathBuf,
    /// The hub's archive URL.
    pub archive: String,
}

impl Bench {
    /// Fresh databases (the legacy table and the target), a fresh AMQP prefix, provisioned.
    pub async fn create(legacy: Legacy, workers: usize, archive: &str) -> Result<Bench> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("exhub_bench_{}", &id[id.len() - 12..]);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut my = sqlx::MySqlConnection::connect(MYSQL).await.context("MariaDB")?;
        sql(format!("CREATE DATABASE {name} DEFAULT CHARSET utf8mb4"))
            .execute(&mut my)
            .await?;
        let (in_mysql, in_postgres) = match legacy {
            Legacy::Mysql => (CTAIS, COMMERCE_MIRROR),
            Legacy::Postgres => (TAX_MIRROR, SAIC),
        };
        sql(format!("USE {name}; {in_mysql}")).execute(&mut my).await?;
        let mut pg = sqlx::PgConnection::connect(POSTGRES).await.context("PostgreSQL")?;
        sql(format!("CREATE DATABASE {name}")).execute(&mut pg).await?;
        let mut db = sqlx::PgConnection::connect(&format!("{POSTGRES}/{name}")).await?;
        sqlx::raw_sql(in_postgres).execute(&mut db).await?;
        let archive = match archive {
            "sqlite" => format!("sqlite://{}", dir.join("archive.db").display()),
            "postgres" => {
                sql(format!("CREATE DATABASE {name}_archive")).execute(&mut pg).await?;
                format!("{POSTGRES}/{name}_archive")
            }
            other => bail!("--archive {other}: sqlite or postgres"),
        };
        let config = dir.join("routes.toml");
        std::fs::write(&config, routes(legacy, &name, &archive, workers))?;
        crate::procs::provision(&config)?;
        Ok(Bench {
            legacy,
            name,
            dir,
            config,
            archive,
        })
    }

    /// Starts `exhub ARGS` on this run's config, logging to `log` in its directory, at `info`
    /// or as `EXHUB_BENCH_LOG` says (e.g. `info,exhub_sink=debug` for the sink's per-batch
    /// times; with `EXHUB_BENCH_KEEP=1` the logs outlive the run).
    pub fn spawn(&self, args: &[&str], log: &str) -> Result<Exhub> {
        let filter = std::env::var("EXHUB_BENCH_LOG").unwrap_or_else(|_| "info".to_owned());
        Exhub::spawn(&self.config, args, &filter, &self.dir.join(log))
    }

    async fn measure(&self, tx: u64, rows: u64) -> Result<()> {
        // The source's starting point: its checkpoint after an (empty) snapshot.
        let mut source = self.spawn(&["source", "legacy"], "prime.log")?;
        source
            .wait_log(self.legacy.streaming(), Duration::from_secs(60))
            .await?;
        source.stop();
        let made = Instant::now();
        self.make_backlog(tx, rows).await?;
        let total = tx * rows;
        println!(
            "backlog: {tx} transactions × {rows} rows made in {:.1} s while the exchange was stopped",
            made.elapsed().as_secs_f64()
        );

        let mut target = Target::connect(self.legacy, &self.name).await?;
        let started = Instant::now();
        let mut procs = [
            ("hub", self.spawn(&["hub"], "hub.log")?),
            ("sink", self.spawn(&["sink", "mirror"], "sink.log")?),
            ("source", self.spawn(&["source", "legacy"], "source.log")?),
        ];
        let mut last_print = Instant::now();
        loop {
            let count = target.count(self.legacy.count_target()).await?;
            if u64::try_from(count).unwrap_or(0) >= total {
                break;
            }
            for (_, p) in procs.iter_mut() {
                p.check_alive()?;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                println!(
                    "  {count} rows in the target after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("only {count} of {total} rows after an hour");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = total as f64 / secs;
        let mut figures = Vec::new();
        for (name, p) in procs.iter_mut() {
            let (rss, cpu) = (p.peak_rss_mb()?, p.cpu_seconds()?);
            println!(
                "{name}: peak RSS {rss:.1} MB, CPU {cpu:.1} s ({:.0} % of one core)",
                100.0 * cpu / secs
            );
            figures.push(rss);
            p.stop();
        }
        // Where the hub's time went.
        procs[0].1.print_stages()?;
        println!("{total} rows in {secs:.1} s: {rate:.0} events/s end to end");
        println!(
            "RESULT cdc_{}_events_per_s={rate:.0} source_rss_mb={:.1} hub_rss_mb={:.1} sink_rss_mb={:.1}",
            self.legacy.name(),
            figures[2],
            figures[0],
            figures[1]
        );
        Ok(())
    }

    /// Capture only: the source alone reads the backlog into the ingress queue (the hub has
    /// declared it and is stopped); the clock runs from the source's start until the broker
    /// has confirmed every document (the outbox logs each confirmed flush).
    async fn capture(&self, tx: u64, rows: u64) -> Result<()> {
        let mut hub = self.spawn(&["hub"], "declare.log")?;
        hub.wait_log("consuming", Duration::from_secs(60)).await?;
        hub.stop();
        let mut source = self.spawn(&["source", "legacy"], "prime.log")?;
        source
            .wait_log(self.legacy.streaming(), Duration::from_secs(60))
            .await?;
        source.stop();
        self.make_backlog(tx, rows).await?;
        let total = tx * rows;
        let log = self.dir.join("capture.log");
        let started = Instant::now();
        let mut source = Exhub::spawn(
            &self.config,
            &["source", "legacy"],
            "info,exhub_connect::outbox=debug",
            &log,
        )?;
        loop {
            let published: u64 = std::fs::read_to_string(&log)?
                .lines()
                .filter(|l| l.contains("published"))
                .filter_map(|l| {
                    l.split("documents=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            if published >= total {
                break;
            }
            source.check_alive()?;
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("only {published} of {total} documents confirmed after an hour");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let (rss, cpu) = (source.peak_rss_mb()?, source.cpu_seconds()?);
        source.stop();
        let rate = total as f64 / secs;
        println!(
            "{total} rows captured and confirmed by the broker in {secs:.1} s: {rate:.0} events/s; source peak RSS {rss:.1} MB, CPU {cpu:.1} s ({:.0} % of one core)",
            100.0 * cpu / secs
        );
        println!(
            "RESULT cdc_{}_capture_per_s={rate:.0} source_rss_mb={rss:.1}",
            self.legacy.name()
        );
        Ok(())
    }

    /// `tx` committed transactions of `rows` inserts each, in multi-row statements.
    async fn make_backlog(&self, tx: u64, rows: u64) -> Result<()> {
        let url = match self.legacy {
            Legacy::Mysql => format!("{MYSQL}/{}", self.name),
            Legacy::Postgres => format!("{POSTGRES}/{}", self.name),
        };
        backlog(&url, tx, rows, |n, c| insert(self.legacy, n, c)).await
    }

    /// Drops the databases, the queues and the scratch directory; reports, never fails.
    pub async fn cleanup(&self) {
        let drop_my = async {
            let mut my = sqlx::MySqlConnection::connect(MYSQL).await?;
            sql(format!("DROP DATABASE IF EXISTS {}", self.name))
                .execute(&mut my)
                .await?;
            let mut pg = sqlx::PgConnection::connect(POSTGRES).await?;
            // The source's slot pins the legacy database.
            sql(format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{}'",
                self.name
            ))
            .execute(&mut pg)
            .await?;
            for db in [self.name.clone(), format!("{}_archive", self.name)] {
                sql(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut pg)
                    .await?;
            }
            let conn = amqp::connect(&admin_url(), "exhub-bench-cleanup").await?;
            let ch = conn.create_channel().await?;
            Topology::new(self.name.clone()).delete_all(&ch, &["mirror"]).await?;
            conn.close(200, "".into()).await?;
            anyhow::Ok(())
        };
        if let Err(e) = drop_my.await {
            eprintln!("cleanup of {}: {e:#}", self.name);
        }
        if std::env::var_os("EXHUB_BENCH_KEEP").is_some() {
            eprintln!("kept the run's logs and archive in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Generated SQL: names and values made here, not read from anywhere.
pub fn sql(text: String) -> sqlx::RawSql {
    sqlx::raw_sql(sqlx::AssertSqlSafe(text))
}

/// `tx` committed transactions of `rows` inserts each, in multi-row statements.
async fn backlog(url: &str, tx: u64, rows: u64, insert: impl Fn(u64, u64) -> String) -> Result<()> {
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(url).await?;
    let mut n = 0;
    for _ in 0..tx {
        let mut t = db.begin().await?;
        let mut left = rows;
        while left > 0 {
            let chunk = left.min(ROWS_PER_STATEMENT);
            sql(insert(n, chunk)).execute(&mut *t).await?;
            n += chunk;
            left -= chunk;
        }
        t.commit().await?;
    }
    Ok(())
}

/// One INSERT of `count` rows from row number `start` (10 columns, about 200 bytes a row).
pub fn insert(legacy: Legacy, start: u64, count: u64) -> String {
    let mut sql = String::from(match legacy {
        Legacy::Mysql => {
            "INSERT INTO nsr_djxx (nsrsbh, nsrmc, fddbr, djrq, djzclx, nsrzt, ssqx, scjydz, zczb, xgsj) VALUES "
        }
        Legacy::Postgres => {
            "INSERT INTO scjg_yyzz (tyshxydm, qymc, fddbr, clrq, qylx, djzt, ssq, zs, zczb, gxsj) VALUES "
        }
    });
    let (company_type, status) = match legacy {
        Legacy::Mysql => ("173", "03"),
        Legacy::Postgres => ("1100", "1"),
    };
    for n in start..start + count {
        if n > start {
            sql.push(',');
        }
        sql.push_str(&format!(
            "('{}','佛山市南海区桂城第{n}号测试企业有限公司','陈{n}','2020-01-{:02}','{company_type}','{status}','南海','佛山市南海区桂城街道南海大道北{n}号',{n}.25,'2026-11-22 10:00:{:02}')",
            exhub_schemas::samples::taxpayer_id(n),
            n % 28 + 1,
            n % 60
        ));
    }
    sql
}

/// The target, in whichever database it is.
enum Target {
    Mysql(sqlx::MySqlConnection),
    Postgres(sqlx::PgConnection),
}

impl Target {
    async fn connect(legacy: Legacy, name: &str) -> Result<Target> {
        Ok(match legacy {
            Legacy::Mysql => Target::Postgres(sqlx::PgConnection::connect(&format!("{POSTGRES}/{name}")).await?),
            Legacy::Postgres => Target::Mysql(sqlx::MySqlConnection::connect(&format!("{MYSQL}/{name}")).await?),
        })
    }

    async fn count(&mut self, query: &'static str) -> Result<i64> {
        let (count,): (i64,) = match self {
            Target::Mysql(c) => sqlx::query_as(query).fetch_one(c).await?,
            Target::Postgres(c) => sqlx::query_as(query).fetch_one(c).await?,
        };
        Ok(count)
    }
}

/// The exchange: the source `legacy`, the hub (its archive at `archive`), the sink `mirror`.
fn routes(legacy: Legacy, name: &str, archive: &str, workers: usize) -> String {
    let graph = match legacy {
        Legacy::Mysql => include_str!("../../examples/legacy/cdc-mysql.toml"),
        Legacy::Postgres => include_str!("../../examples/legacy/cdc-postgres.toml"),
    }
    .replace("LEGACY_DB", name)
    .replace("TARGET_DB", name);
    routes_toml(archive, name, workers, &graph)
}
