//! Encryption in transit: an exchange whose hub URL is `amqps://` runs over TLS end to end — the
//! hub, a MariaDB source and a PostgreSQL sink each reach RabbitMQ on its TLS port, and the
//! databases over TLS too —, TLS that cannot be had as asked is an error that says so, never a
//! connection in clear text, and an org may log in with a client certificate instead of a
//! password (SASL EXTERNAL). Relies on the local CA and TLS listeners of scripts/services.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::exchange::{ArchiveKind, Exchange, tax_doc};
use crate::{exhub_bin, root, services};

/// The local CA scripts/services.sh makes; servers' certificates are signed by it.
const CA: &str = "/var/lib/exhub-tls/ca.pem";
/// Its key (root only; the tests run as root, like scripts/services.sh).
const CA_KEY: &str = "/var/lib/exhub-tls/ca.key";

/// `[hub] amqp` of `ex` switched from the plain port to `base` (`amqps://USER@host:port`, USER
/// standing for the hub's user) with `query`: everything the exchange runs (hub, sources, sinks,
/// `exhub publish`) then reaches RabbitMQ that way.
fn hub_url(ex: &Exchange, base: &str, query: &str) {
    let hub = ex.user("hub");
    let plain = format!("amqp://{hub}@127.0.0.1:5672/%2f");
    let text = std::fs::read_to_string(&ex.config).unwrap();
    assert!(text.contains(&plain), "{text}");
    let text = text.replace(&plain, &format!("{}/%2f{query}", base.replace("USER", &hub)));
    std::fs::write(&ex.config, text).unwrap();
}

/// `(user, ssl)` of every RabbitMQ connection whose user starts with `prefix`.
fn connections(prefix: &str) -> Vec<(String, String)> {
    services::query(
        "rabbitmqctl",
        &["-q", "list_connections", "--no-table-headers", "user", "ssl"],
    )
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter(|(user, _)| user.starts_with(prefix))
    .map(|(u, s)| (u.to_owned(), s.trim().to_owned()))
    .collect()
}

/// Runs `exhub ARGS` on `ex`'s config; it must end within `secs` (a connection that retried
/// forever would not). Its output.
fn exhub_within(ex: &Exchange, args: &[&str], secs: u64) -> Output {
    exhub_with_env(ex, args, &[], secs)
}

/// [`exhub_within`] with environment variables.
fn exhub_with_env(ex: &Exchange, args: &[&str], env: &[(&str, &str)], secs: u64) -> Output {
    let mut child = Command::new(exhub_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("EXHUB_CONFIG", &ex.config)
        .current_dir(&ex.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "exhub {args:?} still running after {secs} s (retrying?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A legacy CTAIS database in MariaDB (seeded) and an empty mirror in PostgreSQL, dropped with
/// the `exhub run` process when the test ends.
struct Databases {
    legacy: String,
    target: String,
    run: Option<Child>,
}

impl Databases {
    fn new() -> Databases {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dbs = Databases {
            legacy: format!("ctais_tls_{}", &id[id.len() - 12..]),
            target: format!("mirror_tls_{}", &id[id.len() - 12..]),
            run: None,
        };
        services::query(
            "mysql",
            &[
                "-uroot",
                "-e",
                &format!("CREATE DATABASE {} DEFAULT CHARSET utf8mb4", dbs.legacy),
            ],
        );
        for file in ["tax_ctais.sql", "tax_ctais_seed.sql"] {
            let path = root().join("examples/legacy").join(file);
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("mysql -uroot {} < {}", dbs.legacy, path.display()))
                .status()
                .unwrap();
            assert!(status.success(), "loading {file}");
        }
        services::psql("postgres", &format!("CREATE DATABASE {}", dbs.target));
        let mirror = root().join("examples/legacy/commerce_mirror.sql");
        services::psql_with(&dbs.target, &["-f", mirror.to_str().unwrap()]);
        dbs
    }

    fn legacy_count(&self) -> usize {
        services::mysql(&self.legacy, "SELECT count(*) FROM nsr_djxx")
            .parse()
            .unwrap()
    }

    fn target_count(&self) -> usize {
        services::psql(&self.target, "SELECT count(*) FROM tax_registration")
            .parse()
            .unwrap()
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = run.kill();
            let _ = run.wait();
        }
        let _ = Command::new("mysql")
            .args(["-uroot", "-e", &format!("DROP DATABASE IF EXISTS {}", self.legacy)])
            .status();
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-XAtq", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.target))
            .status();
    }
}

async fn wait_until(what: &str, timeout: Duration, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_amqps_exchange_runs_over_tls_end_to_end() {
    let mut dbs = Databases::new();
    let graph = std::fs::read_to_string(root().join("examples/legacy/cdc-mysql.toml"))
        .unwrap()
        .replace(
            "3306/LEGACY_DB\"",
            &format!("3306/{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={CA}\"", dbs.legacy),
        )
        .replace(
            "5432/TARGET_DB\"",
            &format!("5432/{}?sslmode=verify-full&sslrootcert={CA}\"", dbs.target),
        );
    let ex = Exchange::new("tls", ArchiveKind::Sqlite, "", &graph);
    hub_url(&ex, "amqps://USER@127.0.0.1:5671", &format!("?cacertfile={CA}"));
    let check = ex.exhub(&["check"]);
    assert!(check.status.success(), "{}", text(&check));

    // The hub, the MariaDB source and the PostgreSQL sink in one process.
    let log = ex.dir.join("run.log");
    dbs.run = Some(
        Command::new(exhub_bin())
            .arg("run")
            .env("EXHUB_CONFIG", &ex.config)
            .current_dir(&ex.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The seed arrives through the snapshot, then a new row through the binlog.
    let seeded = dbs.legacy_count();
    wait_until("the snapshot in the mirror", Duration::from_secs(60), &log, || {
        dbs.target_count() == seeded
    })
    .await;
    services::mysql(
        &dbs.legacy,
        "INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX2M', '佛山市南海区云帆信息技术有限公司', '赵敏', '2026-12-01', '173', '03', '南海', NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    wait_until("the new row in the mirror", Duration::from_secs(30), &log, || {
        dbs.target_count() == seeded + 1
    })
    .await;
    // A document published by hand (`exhub publish`, the org's login from `[hub] amqp`).
    let (id, doc) = tax_doc("nanhai.tax", 7, "南海");
    let file = ex.dir.join("doc.json");
    std::fs::write(&file, doc).unwrap();
    let published = exhub_within(&ex, &["publish", "--as", "nanhai.tax", file.to_str().unwrap()], 30);
    assert!(
        published.status.success() && text(&published).contains(&id),
        "{}",
        text(&published)
    );
    wait_until("the published row in the mirror", Duration::from_secs(30), &log, || {
        dbs.target_count() == seeded + 2
    })
    .await;

    // Every connection of this exchange's users (hub, source as nanhai.tax, sink as
    // nanhai.commerce) is TLS.
    let prefix = format!("{}-", ex.user("hub").trim_end_matches("-hub"));
    let wanted = [ex.user("hub"), ex.user("tax"), ex.user("commerce")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = connections(&prefix);
        if wanted.iter().all(|u| seen.iter().any(|(user, _)| user == u)) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "connections of {wanted:?} not all listed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        seen.iter().all(|(_, ssl)| ssl == "true"),
        "a connection is not TLS: {seen:?}"
    );
    // PostgreSQL: the sink's connections to the mirror are TLS as well.
    let pg = services::psql(
        "postgres",
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = '{}' AND a.pid <> pg_backend_pid()",
            dbs.target
        ),
    );
    let (tls, all) = pg.split_once('|').unwrap();
    assert!(all != "0" && tls == all, "PostgreSQL connections over TLS | all: {pg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_that_cannot_be_had_is_a_clear_error_not_clear_text() {
    let ex = Exchange::new("tls-refused", ArchiveKind::Sqlite, "", "");
    let original = std::fs::read_to_string(&ex.config).unwrap();
    let (_, doc) = tax_doc("nanhai.tax", 8, "南海");
    let file = ex.dir.join("doc.json");
    std::fs::write(&file, doc).unwrap();
    let publish = |ex: &Exchange| exhub_within(ex, &["publish", "--as", "nanhai.tax", file.to_str().unwrap()], 30);
    let prefix = format!("{}-", ex.user("hub").trim_end_matches("-hub"));

    // amqps:// to the clear-text port: the handshake fails, and is not retried.
    hub_url(&ex, "amqps://USER@127.0.0.1:5672", &format!("?cacertfile={CA}"));
    let out = publish(&ex);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("TLS handshake with 127.0.0.1:5672 failed") && text(&out).contains("5671"),
        "{}",
        text(&out)
    );
    let hub = exhub_within(&ex, &["hub"], 30);
    assert!(
        !hub.status.success() && text(&hub).contains("TLS handshake"),
        "{}",
        text(&hub)
    );

    // The TLS port with a certificate no trusted CA signed (no cacertfile): refused too.
    std::fs::write(&ex.config, &original).unwrap();
    hub_url(&ex, "amqps://USER@127.0.0.1:5671", "");
    let out = publish(&ex);
    assert!(
        !out.status.success() && text(&out).contains("TLS handshake with 127.0.0.1:5671 failed"),
        "{}",
        text(&out)
    );
    // No connection of this exchange is open, in clear text or otherwise.
    assert_eq!(connections(&prefix), Vec::new());

    // Settings that cannot be honoured, found by `exhub check` before anything connects.
    let refused = |hub_amqp: &str, extra: &str, expect: &str| {
        let config = original.replace(
            &format!("amqp://{}@127.0.0.1:5672/%2f", ex.user("hub")),
            &hub_amqp.replace("USER", &ex.user("hub")),
        ) + extra;
        std::fs::write(&ex.config, config).unwrap();
        let out = ex.exhub(&["check"]);
        assert!(
            !out.status.success() && text(&out).contains(expect),
            "expected {expect:?}: {}",
            text(&out)
        );
    };
    refused(
        &format!("amqp://USER@127.0.0.1:5672/%2f?cacertfile={CA}"),
        "",
        "is amqp://, which is clear text: use amqps://",
    );
    refused(
        "amqps://USER@127.0.0.1:5671/%2f?verify=verify_none",
        "",
        "exhub always verifies the broker's certificate",
    );
    refused(
        "amqps://USER@127.0.0.1:5671/%2f?cacertfile=/nonexistent/ca.pem",
        "",
        "cannot read cacertfile /nonexistent/ca.pem",
    );
    let mysql_preferred = "\n[[source]]\nname = \"legacy\"\norg = \"nanhai.tax\"\nkind = \"mysql\"\n\
                           url = \"mysql://root@127.0.0.1:3306/ctais?ssl-mode=PREFERRED\"\n";
    refused(
        &format!("amqps://USER@127.0.0.1:5671/%2f?cacertfile={CA}"),
        mysql_preferred,
        "ssl-mode=PREFERRED cannot be honoured by the binlog source",
    );

    // A database whose certificate does not verify: the sink stops and says so.
    let sink = "\n[[subscriber]]\nname = \"mirror\"\norg = \"nanhai.commerce\"\nkind = \"postgres\"\n\
                url = \"postgres://postgres@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt\"\n\
                [[route]]\nname = \"r\"\ndoc_types = [\"tax.registration\"]\nto = [\"mirror\"]\n";
    std::fs::write(&ex.config, original.clone() + sink).unwrap();
    let out = exhub_within(&ex, &["sink", "mirror"], 30);
    assert!(
        !out.status.success() && text(&out).to_lowercase().contains("certificate"),
        "{}",
        text(&out)
    );
}

/// A client certificate with common name `cn` (RabbitMQ's user name for it), signed by the local
/// CA: its certificate and key files in `dir`.
fn client_cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{cn}.pem")),
        dir.join(format!("{cn}.key")),
        dir.join(format!("{cn}.csr")),
        dir.join(format!("{cn}.ext")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let (p, serial) = (
        |p: &PathBuf| p.to_str().unwrap().to_owned(),
        format!("0x{}", uuid::Uuid::now_v7().simple()),
    );
    services::query(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ],
    );
    services::query(
        "openssl",
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "1",
            "-in",
            &p(&csr),
            "-CA",
            CA,
            "-CAkey",
            CA_KEY,
            "-set_serial",
            &serial,
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ],
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_logs_in_with_its_client_certificate() {
    let mut ex = Exchange::new("tls-external", ArchiveKind::Sqlite, "", "");
    hub_url(&ex, "amqps://USER@127.0.0.1:5671", &format!("?cacertfile={CA}"));
    ex.start_hub().await;
    let (id, doc) = tax_doc("nanhai.tax", 9, "南海");
    let file = ex.dir.join("doc.json");
    std::fs::write(&file, doc).unwrap();
    let login = |cn: &str| {
        let (cert, key) = client_cert(&ex.dir, cn);
        // No password: the certificate is the login (SASL EXTERNAL; its CN names the user).
        format!(
            "amqps://{}@127.0.0.1:5671/%2f?cacertfile={CA}&certfile={}&keyfile={}&auth_mechanism=external",
            ex.user("tax"),
            cert.display(),
            key.display()
        )
    };
    let publish = |url: &str| {
        exhub_with_env(
            &ex,
            &["publish", "--as", "nanhai.tax", file.to_str().unwrap()],
            &[("EXHUB_AMQP_URL", url)],
            30,
        )
    };
    let out = publish(&login(&ex.user("tax")));
    assert!(out.status.success() && text(&out).contains(&id), "{}", text(&out));
    // The hub took it as the tax bureau's: RabbitMQ vouched for the certificate's user.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ex.archived_ids().await.0.contains(&id) {
        assert!(Instant::now() < deadline, "not archived: {}", ex.hub_log(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A certificate whose name is no user of the broker logs in as nobody.
    let out = publish(&login(&format!("{}-nobody", ex.user("hub").trim_end_matches("-hub"))));
    assert!(
        !out.status.success() && text(&out).contains("RabbitMQ refused"),
        "{}",
        text(&out)
    );
}
