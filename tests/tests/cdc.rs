//! Change data capture end to end: a legacy table (the tax bureau's in MariaDB, or the commerce
//! bureau's in PostgreSQL; its own database per test), the real `exhub` processes (source, hub,
//! sink), a target in the other database (its own database), and the assertion that matters —
//! the target table ends equal to the source table, whatever was killed on the way.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::exchange::{ArchiveKind, Exchange, psql};
use crate::{exhub_bin, root, services};

/// The legacy database, the target database and the exchange between them.
struct Cdc {
    exchange: Exchange,
    legacy: String,
    target: String,
    /// Legacy in PostgreSQL and target in MariaDB (otherwise the other way round).
    from_postgres: bool,
    procs: Vec<(String, Child)>,
}

/// A running `exhub` process.
impl Cdc {
    /// A fresh legacy CTAIS database in MariaDB (with the example seed when `seed`), a fresh
    /// PostgreSQL target, and the exchange between them.
    fn new(tag: &str, seed: bool) -> Cdc {
        Cdc::new_with(tag, seed, "", "")
    }

    /// [`Cdc::new`] with more `[hub]` settings and more of routes.toml.
    fn new_with(tag: &str, seed: bool, hub_extra: &str, graph_extra: &str) -> Cdc {
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
        Cdc::between(tag, legacy, target, false, hub_extra, graph_extra)
    }

    /// A fresh legacy commerce database in PostgreSQL (with the example seed), a fresh MariaDB
    /// target, and the exchange between them.
    fn from_postgres(tag: &str) -> Cdc {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let legacy = format!("scjg_{}", &id[id.len() - 12..]);
        let target = format!("taxm_{}", &id[id.len() - 12..]);
        psql(&format!("CREATE DATABASE {legacy}"));
        pg_file(&legacy, "examples/legacy/commerce_saic.sql");
        pg_file(&legacy, "examples/legacy/commerce_saic_seed.sql");
        mysql_root(&format!("CREATE DATABASE {target} DEFAULT CHARSET utf8mb4"));
        mysql_file(&target, "examples/legacy/tax_mirror.sql");
        Cdc::between(tag, legacy, target, true, "", "")
    }

    /// The exchange of examples/legacy/cdc-*.toml between two fresh databases: source `legacy`
    /// reads the one, sink `mirror` writes the other.
    fn between(
        tag: &str,
        legacy: String,
        target: String,
        from_postgres: bool,
        hub_extra: &str,
        graph_extra: &str,
    ) -> Cdc {
        let template = if from_postgres {
            "cdc-postgres.toml"
        } else {
            "cdc-mysql.toml"
        };
        let graph = std::fs::read_to_string(root().join("examples/legacy").join(template))
            .unwrap()
            .replace("LEGACY_DB", &legacy)
            .replace("TARGET_DB", &target)
            + graph_extra;
        let hub = format!("admin = \"127.0.0.1:0\"\n{hub_extra}");
        Cdc {
            exchange: Exchange::new(tag, ArchiveKind::Sqlite, &hub, &graph),
            legacy,
            target,
            from_postgres,
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

    /// Runs `exhub source legacy` on this exchange's config with `from` replaced by `to`;
    /// asserts that it fails and returns what it printed.
    fn source_fails_with(&self, from: &str, to: &str) -> String {
        let text = std::fs::read_to_string(&self.exchange.config).unwrap();
        let path = self.exchange.dir.join("bad.toml");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let out = Command::new(exhub_bin())
            .args(["source", "legacy", "--config", path.to_str().unwrap()])
            .env_remove("EXHUB_CONFIG")
            .current_dir(&self.exchange.dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Waits until the hub DLQ holds a `mapping` entry that names `column`.
    async fn wait_mapping_dead_letter(&self, column: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&self.exchange.exhub(&["dlq", "list"]).stdout).into_owned();
            if text.contains("mapping") {
                assert!(text.contains(column), "{text}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no mapping DLQ entry: {text}\n{}",
                self.log("run-0.log")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes the first dead letter of the sink `mirror`'s DLQ: its reason.
    async fn mirror_dead_letter_reason(&self) -> String {
        let t = &self.exchange.topology;
        let dlq = self
            .exchange
            .take(&t.subscriber_dlq("mirror"), Duration::from_secs(30), |t| {
                !t.messages.is_empty()
            })
            .await;
        let p = &dlq.messages[0].properties;
        exhub_connect::wire::header_str(p, exhub_connect::wire::header::REASON).unwrap_or_default()
    }

    /// Waits until the target holds more than the seed (3 rows in the PostgreSQL scenario).
    async fn wait_progress(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.target_rows().lines().count() <= 3 {
            assert!(Instant::now() < deadline, "nothing arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
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
        services::mysql(&self.legacy, sql)
    }

    /// The legacy table as comparable text (codes as the target spells them, DATETIME in +08:00).
    fn source_rows(&self) -> String {
        if self.from_postgres {
            return services::psql(
                &self.legacy,
                "SELECT concat_ws('|', tyshxydm, qymc, CASE qylx WHEN '1100' THEN 'limited_liability' WHEN '1200' THEN 'joint_stock' \
                 WHEN '9100' THEN 'individual_business' END, fddbr, coalesce(zczb::text, '-'), bz, clrq, coalesce(yyqxz::text, '-'), \
                 coalesce(md5(jyfw), '-'), zs, coalesce(ssq, '-'), CASE djzt WHEN '1' THEN 'active' WHEN '2' THEN 'revoked' \
                 WHEN '3' THEN 'cancelled' END, coalesce(djjg, '-'), coalesce(fzrq::text, '-')) FROM scjg_yyzz ORDER BY tyshxydm COLLATE \"C\"",
            );
        }
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
        if self.from_postgres {
            return services::mysql(
                &self.target,
                "SELECT CONCAT_WS('|', credit_code, company_name, company_type, legal_representative, IFNULL(registered_capital,'-'), \
                     currency, established_on, IFNULL(business_term_end,'-'), IFNULL(MD5(business_scope),'-'), address, IFNULL(district,'-'), \
                     status, IFNULL(registration_authority,'-'), IFNULL(issued_on,'-')) FROM business_license ORDER BY credit_code",
            );
        }
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
        let (in_mysql, in_postgres) = if self.from_postgres {
            (&self.target, &self.legacy)
        } else {
            (&self.legacy, &self.target)
        };
        let _ = Command::new("mysql")
            .args(["-uroot", "-e", &format!("DROP DATABASE IF EXISTS {in_mysql}")])
            .status();
        // A replication slot pins its database; the killed source's walsender may take a moment
        // to let go of it.
        for _ in 0..50 {
            let left = services::psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM (SELECT CASE WHEN active THEN NULL ELSE pg_drop_replication_slot(slot_name) END \
                     FROM pg_replication_slots WHERE database = '{in_postgres}') s; \
                     SELECT count(*) FROM pg_replication_slots WHERE database = '{in_postgres}'"
                ),
            );
            if left.ends_with('0') {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-XAtq", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {in_postgres} WITH (FORCE)"))
            .status();
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

/// Pipes a SQL script into `client` (`mysql` or `psql` with its arguments) in the background.
fn run_script(client: &mut Command, sql: String) -> Child {
    let mut child = client.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
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
    cdc.wait_mapping_dead_letter("lxdh").await;
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
    cdc.start("source", &["source", "legacy"], "streaming the binlog").await;
    let mut writer = run_script(
        Command::new("mysql").args(["-uroot", &cdc.legacy]),
        workload(0, 6000, per_tx),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cdc.target_sql("SELECT count(*) FROM tax_registration") == "0" {
        assert!(Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cdc.kill(victim);
    let args: &[&str] = if victim == "sink" {
        &["sink", "mirror"]
    } else {
        &["source", "legacy"]
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
    let mysql_url = format!("mysql://root@127.0.0.1:3306/{}", cdc.legacy);
    let run = |config: &str| cdc.source_fails_with(&mysql_url, config);
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

/// A long business scope: TOASTed out of line (the column is `STORAGE EXTERNAL`).
fn long_scope(n: usize) -> String {
    let words = [
        "五金制品制造",
        "金属材料销售",
        "日用百货",
        "技术服务",
        "技术开发",
        "咨询",
        "进出口",
    ];
    (0..n)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect::<Vec<_>>()
        .join("；")
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_changes_reach_mysql_equal() {
    let mut cdc = Cdc::from_postgres("pgcdc-e2e");
    cdc.start("run", &["run"], "streaming the slot").await;
    cdc.wait_equal(Duration::from_secs(60)).await;
    let pg = |sql: &str| services::psql(&cdc.legacy, sql);
    pg(&format!(
        "INSERT INTO scjg_yyzz (tyshxydm, qymc, qylx, fddbr, zczb, clrq, jyfw, zs, ssq, djzt) VALUES \
         ('91440605MA4UJ7KX2M', '佛山市南海区‘长范围’有限公司', '1200', '王五', 0.01, '2024-02-29', '{}', '桂城', NULL, '1');
         UPDATE scjg_yyzz SET qymc = '佛山市南海区长范围有限公司（更名）', zczb = 99999999999999.99 WHERE tyshxydm = '91440605MA4UJ7KX2M';
         DELETE FROM scjg_yyzz WHERE tyshxydm = '92440605MA52LM8R4G';
         BEGIN;
         INSERT INTO scjg_yyzz (tyshxydm, qymc, qylx, fddbr, clrq, zs, djzt) VALUES ('91440605MA4UJ7KX3Q', '事务内新增', '9100', '赵六', '2000-01-01', '大沥', '1');
         UPDATE scjg_yyzz SET djzt = '3', yyqxz = '2030-01-01', djjg = NULL WHERE tyshxydm = '91440605MA51XQ2P35';
         UPDATE scjg_yyzz SET tyshxydm = '91440604MA4WQ3JN6T' WHERE tyshxydm = '91440605MA4UJ7KX1J';
         COMMIT;",
        long_scope(600)
    ));
    cdc.wait_equal(Duration::from_secs(30)).await;
    // An update that leaves the TOASTed scope alone, in a later batch: the target keeps it.
    pg("UPDATE scjg_yyzz SET fddbr = '王五五' WHERE tyshxydm = '91440605MA4UJ7KX2M'");
    cdc.wait_equal(Duration::from_secs(30)).await;
    assert_eq!(
        services::mysql(
            &cdc.target,
            "SELECT CHAR_LENGTH(business_scope) > 2000 FROM business_license WHERE credit_code = '91440605MA4UJ7KX2M'"
        ),
        "1"
    );
    // A mapped column that disappears: its rows go to the DLQ with reason `mapping`.
    pg("ALTER TABLE scjg_yyzz DROP COLUMN ssq;
        INSERT INTO scjg_yyzz (tyshxydm, qymc, qylx, fddbr, clrq, zs, djzt) VALUES ('91440605MA4UJ7KX4U', '删列后新增', '1100', '钱七', '2025-05-05', '九江', '1')");
    cdc.wait_mapping_dead_letter("ssq").await;
    // Retiring the source removes its slot and publication.
    for (_, child) in cdc.procs.iter_mut() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(child.wait().unwrap().success());
    }
    cdc.procs.clear();
    let out = cdc.exchange.exhub(&["source", "legacy", "--drop-slot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slots = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
        cdc.legacy
    );
    assert_eq!(services::psql("postgres", &slots), "0");
    assert_eq!(pg("SELECT count(*) FROM pg_publication"), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_source_killed_mid_stream_loses_nothing() {
    let mut cdc = Cdc::from_postgres("pgcdc-kill");
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    cdc.start("source", &["source", "legacy"], "streaming the slot").await;
    let mut writer = pg_script(&cdc.legacy, pg_workload(0, 3000));
    cdc.wait_progress().await;
    cdc.kill("source");
    cdc.start("source", &["source", "legacy"], "streaming the slot").await;
    assert!(writer.wait().unwrap().success());
    cdc.wait_equal(Duration::from_secs(120)).await;
    let applied = services::mysql(&cdc.target, "SELECT COUNT(*) FROM exhub_applied");
    assert_eq!(applied, "3003");
    let dlq = String::from_utf8_lossy(&cdc.exchange.exhub(&["dlq", "list"]).stdout).into_owned();
    assert!(dlq.starts_with("0 dead-lettered"), "{dlq}");
}

/// The source loses PostgreSQL (restarted mid-stream), reconnects on its own, and the target
/// ends equal. Runs alone (it restarts the shared server).
#[tokio::test(flavor = "multi_thread")]
async fn restart_postgres_mid_stream_target_ends_equal() {
    let mut cdc = Cdc::from_postgres("pgcdc-restart");
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    cdc.start("source", &["source", "legacy"], "streaming the slot").await;
    assert!(pg_script(&cdc.legacy, pg_workload(0, 1500)).wait().unwrap().success());
    cdc.wait_progress().await;
    services::restart_postgres();
    // Changes made after the restart arrive too, through the reconnected source.
    assert!(
        pg_script(&cdc.legacy, pg_workload(1500, 1500))
            .wait()
            .unwrap()
            .success()
    );
    cdc.wait_equal(Duration::from_secs(120)).await;
    assert!(
        cdc.log("source-0.log")
            .contains("source interrupted; resuming from the checkpoint"),
        "the source did not notice the restart: {}",
        cdc.log("source-0.log")
    );
    assert!(
        cdc.procs.iter_mut().all(|(_, c)| c.try_wait().unwrap().is_none()),
        "a process stopped"
    );
}

/// PostgreSQL restarted with `wal_level = replica`: the source refuses to start and says why.
/// Runs alone; PostgreSQL refuses to start below `logical` while logical slots exist, so every
/// inactive logical slot on this (test) server is dropped first. The setting is restored and
/// the server restarted when the test ends, whatever happens in it.
#[tokio::test(flavor = "multi_thread")]
async fn restart_postgres_without_logical_wal_names_the_cause() {
    struct Override(std::path::PathBuf);
    impl Drop for Override {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            services::restart_postgres();
        }
    }
    let cdc = Cdc::from_postgres("pgcdc-wal");
    services::psql(
        "postgres",
        "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT active",
    );
    let file = std::path::PathBuf::from(format!(
        "/etc/postgresql/{}/main/conf.d/99-exhub-test-wal.conf",
        services::postgres_version()
    ));
    std::fs::write(&file, "wal_level = replica\n").unwrap();
    let restore = Override(file);
    services::restart_postgres();
    assert_eq!(services::psql("postgres", "SHOW wal_level"), "replica");
    let err = cdc.source_fails_with("kind = \"postgres\"", "kind = \"postgres\"");
    assert!(
        err.contains("wal_level is replica") && err.contains("wal_level = logical"),
        "{err}"
    );
    drop(restore);
    assert_eq!(services::psql("postgres", "SHOW wal_level"), "logical");
}

/// `count` licences inserted in transactions of 20 from number `start`, then every third of
/// them updated, as one SQL script.
fn pg_workload(start: u64, count: u64) -> String {
    let mut sql = String::new();
    for first in (start..start + count).step_by(20) {
        sql.push_str("BEGIN;\n");
        for n in first..(first + 20).min(start + count) {
            sql.push_str(&format!(
                "INSERT INTO scjg_yyzz (tyshxydm, qymc, qylx, fddbr, zczb, clrq, zs, djzt) VALUES ('{}', '第{n}号测试企业', '1100', '测试{n}', {n}.5, '2020-01-{:02}', '桂城', '1');\n",
                taxpayer(n + 1000),
                n % 28 + 1
            ));
        }
        sql.push_str("COMMIT;\n");
    }
    for n in (start..start + count).step_by(3) {
        sql.push_str(&format!(
            "UPDATE scjg_yyzz SET qymc = qymc || '（更新）', djzt = '2' WHERE tyshxydm = '{}';\n",
            taxpayer(n + 1000)
        ));
    }
    sql
}

/// Runs a SQL script against a PostgreSQL database in the background, stopping at an error.
fn pg_script(db: &str, sql: String) -> Child {
    run_script(
        Command::new("psql").args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
        ]),
        sql,
    )
}

/// An idle source still moves its slot as the server writes WAL for others, reads the slot's
/// retained WAL and lag into its checkpoint, and warns past `lag_warn_mb`.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_idle_source_advances_its_slot_and_reports_lag() {
    let mut cdc = Cdc::from_postgres("pgcdc-idle");
    let text = std::fs::read_to_string(&cdc.exchange.config).unwrap();
    let marker = format!("publication = \"{}\"", cdc.legacy);
    // And an early warning on any retained WAL at all: the slot's reading reaches the hub in
    // the source's heartbeat.
    let alert = "\n[[alert]]\nmetric = \"log_retained_bytes\"\nyellow = 1\nred = 1e15\n";
    std::fs::write(
        &cdc.exchange.config,
        text.replace(&marker, &format!("{marker}\nlag_warn_mb = 0")) + alert,
    )
    .unwrap();
    // The hub declares the topology; a source alone waits for it.
    cdc.exchange.start_hub().await;
    cdc.start("source", &["source", "legacy"], "streaming the slot").await;
    let confirmed = format!(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        cdc.legacy
    );
    let before: u64 = services::psql("postgres", &confirmed).parse().unwrap();
    // WAL the source has no interest in: a table outside its publication.
    services::psql(
        &cdc.legacy,
        "CREATE TABLE other (n int); INSERT INTO other SELECT generate_series(1, 1000)",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while services::psql("postgres", &confirmed).parse::<u64>().unwrap() <= before {
        assert!(
            Instant::now() < deadline,
            "the idle slot did not move: {}",
            cdc.log("source-0.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = cdc.log("source-0.log");
    assert!(log.contains("retains more WAL than the threshold"), "{log}");
    let checkpoint = std::fs::read_to_string(cdc.exchange.dir.join("exhub-state/legacy.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
    assert!(
        state["slot"]["retained_bytes"].as_i64().is_some_and(|b| b > 0),
        "{checkpoint}"
    );
    let addr = crate::hub::admin_address(&cdc.exchange);
    let level = r#"exhub_alert_level{metric="log_retained_bytes",scope="source:legacy"}"#;
    let samples = crate::hub::wait_for_metrics(&addr, &[(level, 1.0)]).await;
    let retained = samples[r#"exhub_source_log_retained_bytes{source="legacy"}"#];
    assert!(retained > 0.0, "{retained}");
}

/// Kills the source (SIGKILL) while its snapshot of 30,000 rows is under way, restarts it: the
/// snapshot resumes after its last confirmed chunk and the target ends equal, with nothing
/// refused by the hub.
async fn snapshot_killed_midway_resumes(mut cdc: Cdc) {
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    let seed = cdc.target_rows().lines().count();
    cdc.start("source", &["source", "legacy"], "snapshot of table started")
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cdc.target_rows().lines().count() == seed {
        assert!(Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cdc.kill("source");
    let checkpoint = std::fs::read_to_string(cdc.exchange.dir.join("exhub-state/legacy.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
    assert!(
        !state["snapshot"].is_null(),
        "killed after the snapshot ended: {checkpoint}"
    );
    let ready = if cdc.from_postgres {
        "streaming the slot"
    } else {
        "streaming the binlog"
    };
    cdc.start("source", &["source", "legacy"], ready).await;
    cdc.wait_equal(Duration::from_secs(120)).await;
    let dlq = String::from_utf8_lossy(&cdc.exchange.exhub(&["dlq", "list"]).stdout).into_owned();
    assert!(dlq.starts_with("0 dead-lettered"), "{dlq}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_snapshot_killed_midway_resumes() {
    let cdc = Cdc::new("cdc-snap-kill", false);
    let script = run_script(
        Command::new("mysql").args(["-uroot", &cdc.legacy]),
        workload(0, 30_000, 1000),
    );
    assert!(script.wait_with_output().unwrap().status.success());
    snapshot_killed_midway_resumes(cdc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_snapshot_killed_midway_resumes() {
    let cdc = Cdc::from_postgres("pgcdc-snap-kill");
    assert!(pg_script(&cdc.legacy, pg_workload(0, 30_000)).wait().unwrap().success());
    snapshot_killed_midway_resumes(cdc).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_bad_source_settings_name_the_cause() {
    let cdc = Cdc::from_postgres("pgcdc-bad");
    let run = |from: &str, to: &str| cdc.source_fails_with(from, to);
    let legacy = &cdc.legacy;
    let url = format!("postgres://postgres@127.0.0.1:5432/{legacy}");
    let role = format!("r{}", &legacy[legacy.len() - 8..]);
    psql(&format!("CREATE ROLE {role} LOGIN"));
    let no_replication = run(&url, &format!("postgres://{role}@127.0.0.1:5432/{legacy}"));
    psql(&format!("DROP ROLE {role}"));
    assert!(no_replication.contains("REPLICATION"), "{no_replication}");
    // The same columns, no primary key.
    services::psql(legacy, "CREATE TABLE no_key (LIKE scjg_yyzz)");
    let no_key = run("table = \"scjg_yyzz\"", "table = \"no_key\"");
    assert!(no_key.contains("no usable key"), "{no_key}");
    let missing = run("table = \"scjg_yyzz\"", "table = \"scjg_gone\"");
    assert!(missing.contains("scjg_gone does not exist"), "{missing}");
    let no_db = run(&url, "postgres://postgres@127.0.0.1:5432/no_such_db_exhub");
    assert!(no_db.contains("no such database"), "{no_db}");
}

/// A copy the sink has not applied yet shows in the hub's metrics, and goes once it is.
#[tokio::test(flavor = "multi_thread")]
async fn copies_not_applied_show_until_the_sink_applies_them() {
    let mut cdc = Cdc::new("unapplied", false);
    cdc.exchange.start_hub().await;
    let addr = crate::hub::admin_address(&cdc.exchange);
    // The sink is not running: the copy waits, and the hub says so.
    let (id, doc) = crate::exchange::tax_doc("nanhai.tax", 8, "南海");
    cdc.exchange.publish(vec![(doc, cdc.exchange.props(&id))]).await;
    let samples = crate::hub::wait_for_metrics(&addr, &[(r#"exhub_unapplied_copies{subscriber="mirror"}"#, 1.0)]).await;
    let age = samples[r#"exhub_oldest_unapplied_copy_seconds{subscriber="mirror"}"#];
    assert!(age > 0.0 && age < 600.0, "{age}");
    // The sink comes: the copy is applied, its receipt recorded, and nothing waits.
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    crate::hub::wait_for_metrics(
        &addr,
        &[
            (r#"exhub_unapplied_copies{subscriber="mirror"}"#, 0.0),
            (r#"exhub_oldest_unapplied_copy_seconds{subscriber="mirror"}"#, 0.0),
        ],
    )
    .await;
}

/// A copy that did not come from the hub — here published straight into the out exchange by the
/// broker's administrator, standing in for any login that could — is not applied: it lands in
/// the subscriber's DLQ as `unauthenticated`, and its fake, newer `source.position` does not make
/// the sink skip the genuine document as stale.
#[tokio::test(flavor = "multi_thread")]
async fn sink_refuses_copies_not_published_by_the_hub() {
    let mut cdc = Cdc::new("sink-forged", false);
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    let t = cdc.exchange.topology.clone();
    let (forged_id, forged) = crate::exchange::tax_doc("nanhai.tax", 7, "南海");
    let forged = String::from_utf8(forged)
        .unwrap()
        .replace("mysql-bin.000003:", "mysql-bin.999999:")
        .replace("第7分公司", "（伪造）");
    let admin = crate::exchange::connect().await.unwrap();
    let ch = admin.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        t.out_exchange().as_str().into(),
        "mirror".into(),
        Default::default(),
        forged.as_bytes(),
        crate::exchange::props(&forged_id, "guest"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(cdc.mirror_dead_letter_reason().await, "unauthenticated");
    // The genuine document, through the hub, is applied.
    let (id, doc) = crate::exchange::tax_doc("nanhai.tax", 7, "南海");
    cdc.exchange.publish(vec![(doc, cdc.exchange.props(&id))]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let names = cdc.target_sql("SELECT name FROM tax_registration");
        if !names.is_empty() || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(names.ends_with("第7分公司"), "{names}");
    // The hub counted both: the forged copy in the subscriber's DLQ, the genuine one applied.
    let addr = crate::hub::admin_address(&cdc.exchange);
    crate::hub::wait_for_metrics(
        &addr,
        &[
            (
                r#"exhub_dead_letters_total{reason="unauthenticated",subscriber="mirror"}"#,
                1.0,
            ),
            (r#"exhub_receipts_total{outcome="applied",subscriber="mirror"}"#, 1.0),
        ],
    )
    .await;
}

/// With hub keys, the sink applies only copies the hub signed — even one published with the
/// hub's own login but unsigned is refused as `signature` — and every applied document comes
/// back as a receipt signed by the subscriber's org, which `exhub archive show` prints.
#[tokio::test(flavor = "multi_thread")]
async fn signed_copies_are_applied_and_receipted() {
    let mut cdc = Cdc::new("receipts", false);
    let ex = &cdc.exchange;
    let key = |who: &[&str]| {
        let mut args = vec!["keys", "generate"];
        args.extend_from_slice(who);
        let out = ex.exhub(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let hub_key = key(&["--hub"]);
    let commerce_key = key(&["--org", "nanhai.commerce", "--alg", "sm2"]);
    let text = std::fs::read_to_string(&ex.config).unwrap();
    let commerce_user = format!("amqp_user = \"{}\"\n", ex.user("commerce"));
    let text = text
        .replacen("[hub]\n", &format!("[hub]\npublic_keys = [\"{hub_key}\"]\n"), 1)
        .replacen(
            &commerce_user,
            &format!("{commerce_user}public_keys = [\"{commerce_key}\"]\n"),
            1,
        );
    std::fs::write(&ex.config, text).unwrap();
    cdc.exchange.start_hub().await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    let t = cdc.exchange.topology.clone();

    // A copy with the hub's login but no hub signature: refused.
    let (unsigned_id, unsigned) = crate::exchange::tax_doc("nanhai.tax", 8, "南海");
    let hub = lapin::Connection::connect(&cdc.exchange.url_of("hub"), Default::default())
        .await
        .unwrap();
    let ch = hub.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        t.out_exchange().as_str().into(),
        "mirror".into(),
        Default::default(),
        &unsigned,
        crate::exchange::props(&unsigned_id, &cdc.exchange.user("hub")),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(cdc.mirror_dead_letter_reason().await, "signature");

    // Through the hub: signed, applied, receipted.
    let (id, doc) = crate::exchange::tax_doc("nanhai.tax", 9, "南海");
    cdc.exchange.publish(vec![(doc, cdc.exchange.props(&id))]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let show = cdc.exchange.exhub(&["archive", "show", &id]);
        let text = String::from_utf8_lossy(&show.stdout).into_owned();
        if text.contains("applied    mirror: applied") {
            assert!(text.contains("signed by nanhai.commerce#"), "{text}");
            assert!(text.contains("signature  none"), "the tax bureau did not sign: {text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no receipt: {text}\n{}",
            cdc.log("sink-0.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cdc.target_sql("SELECT count(*) FROM tax_registration"), "1");
}

/// What the supervision tests add: heartbeats every second, low thresholds, and the alerts
/// routed to the supervision office's feed.
const SUPERVISED: &str = r#"
[[subscriber]]
name = "office"
org = "nanhai.other"
kind = "amqp"

[[route]]
name = "alerts"
doc_types = ["supervision.alert"]
to = ["office"]

[[alert]]
metric = "part_silent_seconds"
yellow = 2
red = 6

[[alert]]
name = "mirror backlog"
metric = "queue_messages"
scope = "subscriber:mirror"
yellow = 1
red = 3
for_seconds = 0

[[alert]]
metric = "delivery_overdue_seconds"
yellow = 1
red = 100000
"#;

/// Every alert's levels in the office's feed, in order, taken until `alert` has `want`.
async fn office_levels(cdc: &Cdc, alert: &str, want: usize) -> std::collections::HashMap<String, Vec<String>> {
    let ex = &cdc.exchange;
    let got = ex
        .take(&ex.topology.subscriber_queue("office"), Duration::from_secs(30), |t| {
            t.messages
                .iter()
                .flat_map(|m| &m.docs)
                .filter(|d| String::from_utf8_lossy(d).contains(&format!("\"{alert}\"")))
                .count()
                >= want
        })
        .await;
    let mut levels: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for d in got.messages.iter().flat_map(|m| &m.docs) {
        let d: serde_json::Value = serde_json::from_slice(d).unwrap();
        assert_eq!(d["header"]["sender"]["org"], "exhub.hub", "{d}");
        assert_eq!(d["header"]["key"]["alert"], d["body"]["alert"], "{d}");
        levels
            .entry(d["body"]["alert"].as_str().unwrap().to_owned())
            .or_default()
            .push(d["body"]["level"].as_str().unwrap().to_owned());
    }
    levels
}

/// Every part reports: the source and the sink show up with their figures; the source killed
/// with SIGKILL is down within three heartbeats, its silence goes yellow then red, and clears
/// when it is back — each change a `supervision.alert` document in the supervision office's
/// feed, and each in the archive.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_source_goes_silent_yellow_then_red_and_clears_when_back() {
    let mut cdc = Cdc::new_with("silent", false, "heartbeat_seconds = 1", SUPERVISED);
    cdc.exchange.start_hub().await;
    cdc.start("source", &["source", "legacy"], "streaming the binlog").await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    let addr = crate::hub::admin_address(&cdc.exchange);
    cdc.legacy_sql(
        "INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX2M', '佛山市南海区测试有限公司', '测试', '2024-02-29', \
         '410', '03', '南海', NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let samples = crate::hub::wait_for_metrics(
        &addr,
        &[
            (r#"exhub_part_up{part="legacy",role="source"}"#, 1.0),
            (r#"exhub_part_up{part="mirror",role="sink"}"#, 1.0),
            (r#"exhub_sink_documents{outcome="applied",subscriber="mirror"}"#, 1.0),
        ],
    )
    .await;
    assert!(
        samples.contains_key(r#"exhub_source_lag_seconds{source="legacy"}"#),
        "{samples:?}"
    );
    assert!(
        samples[r#"exhub_source_log_retained_bytes{source="legacy"}"#] >= 0.0,
        "the binlog's retention is read"
    );

    let source_is = async |up: f64, level: f64| {
        let silence = r#"exhub_alert_level{metric="part_silent_seconds",scope="source:legacy"}"#;
        let part_up = r#"exhub_part_up{part="legacy",role="source"}"#;
        crate::hub::wait_for_metrics(&addr, &[(part_up, up), (silence, level)]).await;
    };
    cdc.kill("source");
    source_is(0.0, 2.0).await;
    cdc.start("source", &["source", "legacy"], "streaming the binlog").await;
    source_is(1.0, 0.0).await;
    let levels = office_levels(&cdc, "part_silent_seconds@source:legacy", 3).await;
    assert_eq!(levels["part_silent_seconds@source:legacy"], ["yellow", "red", "clear"]);
    // The sink never fell silent.
    assert!(!levels.contains_key("part_silent_seconds@sink:mirror"), "{levels:?}");
    let hub_log = cdc.exchange.hub_log(0);
    assert!(hub_log.contains("this hub process watches the alerts"), "{hub_log}");
}

/// A sink stopped while documents come: its queue goes yellow then red and its copies overdue,
/// and both clear once it runs and applies them.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_sink_raises_backlog_and_overdue_alerts_that_clear() {
    let mut cdc = Cdc::new_with("backlog", false, "heartbeat_seconds = 1", SUPERVISED);
    cdc.exchange.start_hub().await;
    let addr = crate::hub::admin_address(&cdc.exchange);
    let publish = async |cdc: &Cdc, from: u64, to: u64| {
        let docs = (from..to)
            .map(|n| {
                let (id, doc) = crate::exchange::tax_doc("nanhai.tax", n, "南海");
                (doc, cdc.exchange.props(&id))
            })
            .collect();
        cdc.exchange.publish(docs).await;
    };
    publish(&cdc, 1, 2).await;
    let level = r#"exhub_alert_level{metric="queue_messages",scope="subscriber:mirror"}"#;
    let overdue = r#"exhub_alert_level{metric="delivery_overdue_seconds",scope="subscriber:mirror"}"#;
    crate::hub::wait_for_metrics(&addr, &[(level, 1.0), (overdue, 1.0)]).await;
    publish(&cdc, 2, 6).await;
    crate::hub::wait_for_metrics(&addr, &[(level, 2.0)]).await;
    cdc.start("sink", &["sink", "mirror"], "consuming").await;
    crate::hub::wait_for_metrics(&addr, &[(level, 0.0), (overdue, 0.0)]).await;
    let levels = office_levels(&cdc, "queue_messages@subscriber:mirror", 3).await;
    assert_eq!(levels["queue_messages@subscriber:mirror"], ["yellow", "red", "clear"]);
    // Archived and audited like any document.
    let archived = cdc
        .exchange
        .exhub(&["archive", "search", "--doc-type", "supervision.alert"]);
    let text = crate::stdout(&archived);
    assert!(
        text.lines().filter(|l| l.contains("supervision.alert")).count() >= 3,
        "{text}"
    );
}
