//! Change data capture end to end: a legacy tax table in MariaDB (its own database per test),
//! the real `exhub` processes (source, hub, sink), a PostgreSQL target (its own database), and
//! the assertion that matters — the target table ends equal to the source table, whatever was
//! killed on the way.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::exchange::{ArchiveKind, Exchange, psql};
use crate::{exhub_bin, root, services};

/// The legacy database, the target database and the exchange between them.
struct Cdc {
    exchange: Exchange,
    legacy: String,
    target: String,
    procs: Vec<(String, Child)>,
}

/// A running `exhub` process.
impl Cdc {
    /// A fresh legacy CTAIS database (with the example seed), a fresh target, and an exchange
    /// whose source `tax` reads the one and whose sink `mirror` writes the other.
    fn new(tag: &str, seed: bool) -> Cdc {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let legacy = format!("ctais_{}", &id[id.len() - 12..]);
        let target = format!("mirror_{}", &id[id.len() - 12..]);
        mysql_root(&format!("CREATE DATABASE {legacy} DEFAULT CHARSET utf8mb4"));
        mysql_file(&legacy, "examples/legacy/tax_ctais.sql");
        if seed {
            mysql_file(&legacy, "examples/legacy/tax_ctais_seed.sql");
        }
        psql(&format!("CREATE DATABASE {target}"));
        pg_file(&target, "examples/legacy/commerce_mirror.sql");
        let graph = format!(
            r#"
[[source]]
name = "tax"
org = "nanhai.tax"
kind = "mysql"
url = "mysql://root@127.0.0.1:3306/{legacy}"
time_zone = "+08:00"
  [[source.table]]
  table = "nsr_djxx"
  doc_type = "tax.registration"
  key = ["nsrsbh"]
  fields = {{ taxpayer_id = "nsrsbh", name = "nsrmc", legal_representative = "fddbr", registered_at = "djrq", registration_type = "djzclx", taxpayer_status = "nsrzt", district = "ssqx", address = "scjydz", capital = "zczb", industry_code = "hydm", tax_authority = "zgswjg", phone = "lxdh", updated_at = "xgsj" }}
  [source.table.values]
  registration_type = {{ "173" = "limited_liability", "410" = "individual_business" }}
  taxpayer_status = {{ "03" = "normal", "05" = "suspended" }}

[[subscriber]]
name = "mirror"
org = "nanhai.commerce"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/{target}"
  [[subscriber.apply]]
  doc_type = "tax.registration"
  table = "tax_registration"

[[route]]
name = "registrations"
doc_types = ["tax.registration"]
to = ["mirror"]
"#
        );
        let exchange = Exchange::new(tag, ArchiveKind::Sqlite, "", &graph);
        Cdc {
            exchange,
            legacy,
            target,
            procs: Vec::new(),
        }
    }

    /// Starts `exhub ARGS` logging to `<name>.log` and waits until its log shows `ready`.
    async fn start(&mut self, name: &str, args: &[&str], ready: &str) {
        let n = self.procs.iter().filter(|(p, _)| p == name).count();
        let log_name = format!("{name}-{n}.log");
        let log = std::fs::File::create(self.exchange.dir.join(&log_name)).unwrap();
        let child = Command::new(exhub_bin())
            .args(args)
            .env("EXHUB_CONFIG", &self.exchange.config)
            .env("EXHUB_LOG", "info,exhub_mysql=debug")
            .current_dir(&self.exchange.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((name.to_owned(), child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log(&log_name).contains(ready) {
            assert!(Instant::now() < deadline, "{name} not ready: {}", self.log(&log_name));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.exchange.dir.join(file)).unwrap_or_default()
    }

    /// SIGKILL to every process named `name`.
    fn kill(&mut self, name: &str) {
        for (p, child) in self.procs.iter_mut() {
            if p == name {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.procs.retain(|(p, _)| p != name);
    }

    fn legacy_sql(&self, sql: &str) -> String {
        services::query("mysql", &["-uroot", "-N", "-B", &self.legacy, "-e", sql])
    }

    /// The legacy table as comparable text (codes as the target spells them, DATETIME in +08:00).
    fn source_rows(&self) -> String {
        self.legacy_sql(
            "SELECT CONCAT_WS('|', nsrsbh, nsrmc, IFNULL(fddbr,'-'), djrq, \
             CASE djzclx WHEN '173' THEN 'limited_liability' WHEN '410' THEN 'individual_business' END, \
             CASE nsrzt WHEN '03' THEN 'normal' WHEN '05' THEN 'suspended' END, ssqx, IFNULL(scjydz,'-'), \
             IFNULL(zczb,'-'), IFNULL(hydm,'-'), IFNULL(zgswjg,'-'), IFNULL(lxdh,'-'), \
             IFNULL(DATE_FORMAT(xgsj, '%Y-%m-%d %H:%i:%s'),'-')) FROM nsr_djxx ORDER BY nsrsbh",
        )
    }

    fn target_sql(&self, sql: &str) -> String {
        services::psql(&self.target, sql)
    }

    fn target_rows(&self) -> String {
        self.target_sql(
            "SELECT concat_ws('|', taxpayer_id, name, coalesce(legal_representative,'-'), registered_at, \
             registration_type, taxpayer_status, district, coalesce(address,'-'), coalesce(capital::text,'-'), \
             coalesce(industry_code,'-'), coalesce(tax_authority,'-'), coalesce(phone,'-'), \
             coalesce(to_char(updated_at AT TIME ZONE 'UTC' + interval '8 hours', 'YYYY-MM-DD HH24:MI:SS'),'-')) \
             FROM tax_registration ORDER BY taxpayer_id COLLATE \"C\"",
        )
    }

    /// Waits until the target equals the source.
    async fn wait_equal(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (s, t) = (self.source_rows(), self.target_rows());
            if s == t {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = std::fs::read_dir(&self.exchange.dir)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| {
                        format!(
                            "== {}\n{}",
                            e.path().display(),
                            std::fs::read_to_string(e.path()).unwrap_or_default()
                        )
                    })
                    .collect();
                panic!(
                    "target differs from source ({} vs {} rows)\nsource:\n{s}\ntarget:\n{t}\n{}",
                    s.lines().count(),
                    t.lines().count(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cdc {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("mysql")
            .args(["-uroot", "-e", &format!("DROP DATABASE IF EXISTS {}", self.legacy)])
            .status();
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.target));
    }
}

fn mysql_root(sql: &str) {
    services::query("mysql", &["-uroot", "-e", sql]);
}

fn mysql_file(db: &str, file: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("mysql -uroot {db} < {}", root().join(file).display()))
        .status()
        .unwrap();
    assert!(status.success(), "loading {file}");
}

fn pg_file(db: &str, file: &str) {
    let path = root().join(file);
    services::psql_with(db, &["-f", path.to_str().unwrap()]);
}

/// A valid unified social credit code for test row `n`.
fn taxpayer(n: u64) -> String {
    exhub_schemas::samples::taxpayer_id(n)
}

/// `count` inserts in transactions of `per_tx` rows, then updates of every third row, as one
/// SQL script.
fn workload(start: u64, count: u64, per_tx: u64) -> String {
    let mut sql = String::new();
    let mut n = start;
    while n < start + count {
        sql.push_str("START TRANSACTION;\n");
        for _ in 0..per_tx.min(start + count - n) {
            sql.push_str(&format!(
                "INSERT INTO nsr_djxx VALUES ('{}', '佛山市南海区第{n}号测试企业有限公司', '测试{n}', '2020-01-{:02}', '173', '03', '南海', NULL, {n}.25, 'C3389', NULL, NULL, '2026-11-22 10:00:{:02}');\n",
                taxpayer(n),
                n % 28 + 1,
                n % 60
            ));
            n += 1;
        }
        sql.push_str("COMMIT;\n");
    }
    for m in (start..start + count).step_by(3) {
        sql.push_str(&format!(
            "UPDATE nsr_djxx SET nsrmc = CONCAT(nsrmc, '（更新）'), zczb = zczb * 2, nsrzt = '05' WHERE nsrsbh = '{}';\n",
            taxpayer(m)
        ));
    }
    sql
}

/// Runs a SQL script against the legacy database in the background.
fn run_script(db: &str, sql: String) -> Child {
    let mut child = Command::new("mysql")
        .args(["-uroot", db])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write as _;
        let _ = stdin.write_all(sql.as_bytes());
    });
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_changes_reach_postgres_equal() {
    let mut cdc = Cdc::new("cdc-e2e", true);
    cdc.start("run", &["run"], "streaming the binlog").await;
    // The seed arrived through the snapshot.
    cdc.wait_equal(Duration::from_secs(60)).await;
    cdc.legacy_sql(
        "INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX2M', '佛山市南海区‘测试’有限公司', NULL, '2024-02-29', '410', '03', '南海', NULL, NULL, NULL, NULL, NULL, NULL);
         UPDATE nsr_djxx SET nsrmc = '佛山市南海区恒达五金制品有限公司（更名）', zczb = 0.01, xgsj = '2026-11-23 23:59:59' WHERE nsrsbh = '91440605MA4UJ7KX1J';
         DELETE FROM nsr_djxx WHERE nsrsbh = '92440605MA52LM8R4G';
         START TRANSACTION;
         INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX3Q', '事务内新增甲', '王五', '2000-01-01', '173', '05', '南海', '地址“甲”', 99999999999999.99, 'A01', '税务所', '020-1234567', '2026-01-01 00:00:00');
         UPDATE nsr_djxx SET fddbr = NULL, lxdh = NULL WHERE nsrsbh = '91440605MA51XQ2P35';
         UPDATE nsr_djxx SET nsrsbh = '91440604MA4WQ3JN6T' WHERE nsrsbh = '91440604MA4WQ3JN5P';
         COMMIT;",
    );
    cdc.wait_equal(Duration::from_secs(30)).await;
    // A column added on the legacy side does not misalign the mapping.
    cdc.legacy_sql(
        "ALTER TABLE nsr_djxx ADD COLUMN bz VARCHAR(10) NULL AFTER nsrsbh;
         INSERT INTO nsr_djxx (nsrsbh, bz, nsrmc, djrq, djzclx, nsrzt, ssqx) VALUES ('91440605MA4UJ7KX4U', '备注', '加列后新增', '2025-05-05', '173', '03', '南海');",
    );
    cdc.wait_equal(Duration::from_secs(30)).await;
    // A mapped column that disappears: its rows go to the DLQ with reason `mapping`, the source
    // goes on.
    cdc.legacy_sql(
        "ALTER TABLE nsr_djxx DROP COLUMN lxdh;
         INSERT INTO nsr_djxx (nsrsbh, nsrmc, djrq, djzclx, nsrzt, ssqx) VALUES ('91440605MA4UJ7KX5Y', '删列后新增', '2025-05-05', '173', '03', '南海');",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cdc.exchange.exhub(&["dlq", "list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("mapping") {
            assert!(text.contains("lxdh"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no mapping DLQ entry: {text}\n{}",
            cdc.log("run-0.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cdc.procs.iter_mut().all(|(_, c)| c.try_wait().unwrap().is_none()),
        "exhub run stopped"
    );
}

/// Streams 6,000 inserts (and 2,000 updates) while `victim` (`source` or `sink`) is killed with
/// SIGKILL as soon as the target shows progress, then restarted; the target must end equal.
async fn kill_mid_stream(victim: &str, per_tx: u64) {
    let mut cdc = Cdc::new(&format!("cdc-kill-{victim}"), false);
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    cdc.start("source", &["source", "tax"], "streaming the binlog").await;
    let mut writer = run_script(&cdc.legacy, workload(0, 6000, per_tx));
    let deadline = Instant::now() + Duration::from_secs(60);
    while cdc.target_sql("SELECT count(*) FROM tax_registration") == "0" {
        assert!(Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cdc.kill(victim);
    let args: &[&str] = if victim == "sink" {
        &["sink", "mirror"]
    } else {
        &["source", "tax"]
    };
    let ready = if victim == "sink" {
        "consuming"
    } else {
        "streaming the binlog"
    };
    cdc.start(victim, args, ready).await;
    assert!(writer.wait().unwrap().success());
    cdc.wait_equal(Duration::from_secs(120)).await;
    // One bookkeeping row per key: every key's newest version applied, none twice.
    assert_eq!(cdc.target_sql("SELECT count(*) FROM exhub_applied"), "6000");
    // What the restarted part re-sent was taken as the same documents (same ids, same content):
    // nothing refused.
    let dlq = String::from_utf8_lossy(&cdc.exchange.exhub(&["dlq", "list"]).stdout).into_owned();
    assert!(dlq.starts_with("0 dead-lettered"), "{dlq}");
}

#[tokio::test(flavor = "multi_thread")]
async fn source_killed_mid_stream_loses_nothing() {
    kill_mid_stream("source", 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_killed_mid_batch_loses_nothing() {
    kill_mid_stream("sink", 50).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_source_settings_name_the_cause() {
    let cdc = Cdc::new("cdc-bad", true);
    let run = |config: &str| {
        let text = std::fs::read_to_string(&cdc.exchange.config).unwrap();
        let path = cdc.exchange.dir.join("bad.toml");
        std::fs::write(
            &path,
            text.replace(&format!("mysql://root@127.0.0.1:3306/{}", cdc.legacy), config),
        )
        .unwrap();
        let out = Command::new(exhub_bin())
            .args(["source", "tax", "--config", path.to_str().unwrap()])
            .env_remove("EXHUB_CONFIG")
            .current_dir(&cdc.exchange.dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let legacy = &cdc.legacy;
    let wrong_password = run(&format!("mysql://root:nope@127.0.0.1:3306/{legacy}"));
    assert!(wrong_password.contains("access denied"), "{wrong_password}");
    let user = format!("u{}", &legacy[legacy.len() - 8..]);
    mysql_root(&format!(
        "CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'; CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
         GRANT SELECT ON {legacy}.* TO '{user}'@'localhost', '{user}'@'%';"
    ));
    let no_grants = run(&format!("mysql://{user}:pw@127.0.0.1:3306/{legacy}"));
    mysql_root(&format!("DROP USER '{user}'@'localhost', '{user}'@'%'"));
    assert!(no_grants.contains("REPLICATION"), "{no_grants}");
    cdc.legacy_sql("RENAME TABLE nsr_djxx TO nsr_djxx_old");
    let missing = run(&format!("mysql://root@127.0.0.1:3306/{legacy}"));
    assert!(missing.contains("nsr_djxx does not exist"), "{missing}");
    let no_db = run("mysql://root@127.0.0.1:3306/no_such_db_exhub");
    assert!(no_db.contains("no such database"), "{no_db}");
}
