//! The `exhub` commands of the foundation: check, validate, convert, schema export.

use std::process::Command;

use crate::{exhub, root, scratch, stdout};

#[test]
fn check_accepts_the_demo_exchange() {
    let out = exhub(&["check"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("routes.toml: ok — 5 orgs, 3 sources, 4 subscribers, 4 routes, 6 doc types"),
        "{text}"
    );
}

#[test]
fn check_reports_every_problem_with_its_place() {
    let out = exhub(&["check", "--config", "examples/config/broken-routes.toml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = [
        ":5:1: error: hub.amqp: URL does not parse",
        ":6:1: error: [hub]: unknown field `retries`",
        ":13:1: error: [[org]]: unknown field `nmae`",
        ":40:3: error: source \"tax-ctais\" → table[0] (nsr_djxx) → fields: required field(s) of tax.registration v1 not mapped: name",
        ":40:38: error: source \"tax-ctais\" → table[0] (nsr_djxx) → fields.nickname: tax.registration v1 has no field \"nickname\"",
        ":68:1: error: subscriber \"social-feed\": unknown field `queue_len`",
        ":71:1: error: subscriber[2]: name \"commerce-mirror\" is already used by subscriber[0]",
        ":83:26: error: route \"tax-registrations\" → to[1]: subscriber \"social-fed\" is not defined",
        ":88:14: error: route \"business-licenses\" → doc_types[0]: doc type \"commerce.business_licence\" has no schema",
        ":89:7: error: route \"business-licenses\" → to[0]: subscriber \"tax-mirror\" is not defined",
        "warning: subscriber \"commerce-mirror\" → apply[0]: no route sends",
        ":97:1: error: source \"tax-archive\": unknown field `slot`, expected `server_id`",
        ":103:1: error: source \"tax-oracle\" → kind: unknown source kind \"oracle\" (known: mysql, postgres, mssql)",
        "13 error(s), 2 warning(s)",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("hunter2"), "a password reached the output:\n{text}");
}

#[test]
fn check_reads_exhub_config_and_more_mistakes() {
    let dir = scratch("check");
    let cfg = dir.join("routes.toml");
    let text = std::fs::read_to_string(root().join("routes.toml"))
        .unwrap()
        .replace(
            "publishes = [\"tax.registration\", \"approval.decision\"]",
            "publishes = [\"approval.decision\"]",
        )
        .replace(
            "where = \"body.district == '南海'\"",
            "where = \"body.distric == '南海' and\"",
        )
        .replace(
            "url = \"mysql://root@127.0.0.1:3306/tax_mirror?ssl-mode=VERIFY_IDENTITY&ssl-ca=/var/lib/exhub-tls/ca.pem\"",
            "url = \"postgres://x@127.0.0.1/y\"",
        );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(crate::exhub_bin())
        .arg("check")
        .env("EXHUB_CONFIG", &cfg)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("org \"nanhai.tax\" may not publish \"tax.registration\""),
        "{text}"
    );
    assert!(text.contains("→ where: filter does not parse"), "{text}");
    assert!(
        text.contains("URL scheme \"postgres\" is not one of mysql, mariadb"),
        "{text}"
    );
    std::fs::write(&cfg, "[hub\namqp = 1\n").unwrap();
    let out = Command::new(crate::exhub_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(":1:"), "{}", stdout(&out));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn validate_prints_every_violation_with_its_pointer() {
    let ok = exhub(&["validate", "examples/documents/commerce.business_license.xml"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("valid commerce.business_license v1"));

    let dir = scratch("validate");
    let bad = std::fs::read_to_string(root().join("examples/documents/social_security.enrollment.json"))
        .unwrap()
        .replace("440605198803124510", "440605198803124511")
        .replace("\"contribution_base\": \"6520.00\"", "\"contribution_base\": \"6520.\"")
        .replace("\"pension\", ", "\"pension\", \"pension\", ");
    std::fs::write(dir.join("bad.json"), bad).unwrap();
    let out = exhub(&["validate", dir.join("bad.json").to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for pointer in [
        "/body/person_id: ",
        "/body/contribution_base: ",
        "/body/insurance_types: ",
    ] {
        assert!(text.contains(pointer), "missing {pointer} in:\n{text}");
    }
    std::fs::write(dir.join("bomb.xml"), "<!DOCTYPE d [<!ENTITY a \"aaaa\">]><document/>").unwrap();
    let out = exhub(&["validate", dir.join("bomb.xml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DOCTYPE is refused") && stderr.contains("[malformed]"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn convert_json_to_xml_and_back_is_identical() {
    let dir = scratch("convert");
    let xml = exhub(&["convert", "--to", "xml", "examples/documents/tax.registration.json"]);
    assert!(xml.status.success());
    std::fs::write(dir.join("doc.xml"), &xml.stdout).unwrap();
    let json = exhub(&["convert", "--to", "json", dir.join("doc.xml").to_str().unwrap()]);
    assert!(json.status.success());
    let direct = exhub(&["convert", "--to", "json", "examples/documents/tax.registration.json"]);
    assert_eq!(stdout(&json), stdout(&direct));
    assert!(stdout(&xml).contains("<name>佛山市南海区桂城恒达五金制品有限公司</name>"));
    assert!(stdout(&xml).contains("&lt;A&amp;B栋&gt;"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn exported_xsd_validates_converted_xml() {
    let dir = scratch("xsd");
    let xsd = exhub(&["schema", "export", "--xsd", "tax.registration"]);
    assert!(xsd.status.success());
    std::fs::write(dir.join("tax.xsd"), &xsd.stdout).unwrap();
    let xml = exhub(&["convert", "--to", "xml", "examples/documents/tax.registration.json"]);
    std::fs::write(dir.join("tax.xml"), &xml.stdout).unwrap();
    let lint = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(dir.join("tax.xsd"))
        .arg(dir.join("tax.xml"))
        .output()
        .unwrap();
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stderr));
    let unknown = exhub(&["schema", "export", "--xsd", "tax.refund"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown doc type \"tax.refund\""));
    std::fs::remove_dir_all(dir).ok();
}

/// The binary starts with every adapter compiled in (the SQL Server one brings rustls; its
/// crypto provider is settled at startup), and a SQL Server source that cannot reach its server
/// says so and retries, as after any lost connection (the server may be restarting) — no
/// panic, and no stop for good. No SQL Server runs here (README).
#[test]
fn sqlserver_source_unreachable_names_the_cause() {
    let dir = scratch("mssql-unreachable");
    let mapping = std::fs::read_to_string(root().join("examples/legacy/cdc-mysql.toml")).unwrap();
    let source = mapping
        .split("[[subscriber]]")
        .next()
        .unwrap()
        .replace("kind = \"mysql\"", "kind = \"mssql\"")
        .replace(
            "mysql://root@127.0.0.1:3306/LEGACY_DB",
            "mssql://exhub:secret@127.0.0.1:1/ctais?encrypt=required",
        )
        .replace("table = \"nsr_djxx\"", "table = \"dbo.nsr_djxx\"");
    // A server that cannot be reached may be restarting: the source says so and retries.
    let log = exhub_logs(&dir, &source, &["source", "legacy"], "resuming from the checkpoint");
    assert!(log.contains("cannot reach SQL Server at 127.0.0.1:1"), "{log}");
}

/// The SQL Server form of the social security source (examples/legacy/social_si_mssql.toml)
/// drops into the demo exchange in place of the MariaDB one and passes the whole-graph check.
#[test]
fn sqlserver_fragment_checks_in_the_demo_exchange() {
    let routes = std::fs::read_to_string(root().join("routes.toml")).unwrap();
    let fragment = std::fs::read_to_string(root().join("examples/legacy/social_si_mssql.toml")).unwrap();
    let start = routes.find("[[source]]\nname = \"social-si\"").unwrap();
    let end = start + routes[start..].find("[[subscriber]]").unwrap();
    let dir = scratch("mssql-fragment");
    let config = dir.join("routes.toml");
    std::fs::write(&config, format!("{}{fragment}\n{}", &routes[..start], &routes[end..])).unwrap();
    let out = exhub(&["check", "--config", config.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("3 sources"), "{text}");
}

/// A SQL Server sink that cannot reach its server stops with an error that says so.
#[test]
fn sqlserver_sink_unreachable_names_the_cause() {
    let dir = scratch("mssql-sink-unreachable");
    let graph = "[[subscriber]]\nname = \"si-mirror\"\norg = \"nanhai.tax\"\nkind = \"mssql\"\n\
                 url = \"mssql://exhub:secret@127.0.0.1:1/si?encrypt=off\"\n\
                 [[subscriber.apply]]\ndoc_type = \"tax.registration\"\ntable = \"dbo.tax_registration\"\n\n\
                 [[route]]\nname = \"all\"\ndoc_types = [\"tax.registration\"]\nto = [\"si-mirror\"]\n";
    let err = exhub_fails_with(&dir, graph, &["sink", "si-mirror"]);
    assert!(err.contains("cannot connect to SQL Server at 127.0.0.1:1"), "{err}");
}

/// Runs `exhub ARGS` on a routes.toml in `dir` made of a hub, the tax org and `graph`; asserts it
/// fails with exit code 2 without a panic or the password `secret` in its output, and returns
/// that output.
/// Runs `exhub ARGS` on `graph` until its log shows `needle` (then stops it); the log so far.
/// Fails if it does not within 60 s, or exits first.
fn exhub_logs(dir: &std::path::Path, graph: &str, args: &[&str], needle: &str) -> String {
    let config = write_config(dir, graph);
    let mut child = Command::new(crate::exhub_bin())
        .args(args)
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            if line.ok().is_none_or(|l| tx.send(l).is_err()) {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.contains(needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no {needle:?} in the log:\n{log}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!log.contains("panicked") && !log.contains("secret"), "{log}");
    log
}

/// routes.toml in `dir`: a hub, org `nanhai.tax` (with its password file) and `graph`.
fn write_config(dir: &std::path::Path, graph: &str) -> std::path::PathBuf {
    let config = dir.join("routes.toml");
    // The org's AMQP password file, as `exhub provision` would write it.
    let secrets = dir.join("exhub-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let password = secrets.join("nanhai.tax.password");
    std::fs::write(&password, "not-used\n").unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[hub]\namqp = \"amqp://exhub-hub:secret@127.0.0.1:5672/%2f\"\narchive = \"sqlite://{}\"\n\n\
             [[org]]\nid = \"nanhai.tax\"\nname = \"南海区税务局\"\npublishes = [\"tax.registration\"]\n\n{graph}",
            dir.join("archive.db").display()
        ),
    )
    .unwrap();
    config
}

fn exhub_fails_with(dir: &std::path::Path, graph: &str, args: &[&str]) -> String {
    let config = write_config(dir, graph);
    let out = Command::new(crate::exhub_bin())
        .args(args)
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked") && !err.contains("secret"), "{err}");
    err
}

/// The small routes.toml in README.md is complete and valid.
#[test]
fn the_readme_example_config_checks() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("```toml\n[hub]").expect("a routes.toml in README.md") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let dir = scratch("readme-config");
    let config = dir.join("routes.toml");
    std::fs::write(&config, &readme[start..end]).unwrap();
    let out = exhub(&["check", "--config", config.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 orgs, 1 sources, 2 subscribers, 1 routes"), "{text}");
}

/// `--drop-slot` retires a PostgreSQL source; on a kind that holds nothing on the server it is
/// refused, and the checkpoint stays (`--reset` forgets it on purpose).
#[test]
fn drop_slot_is_refused_where_there_is_no_slot() {
    let dir = scratch("mysql-drop-slot");
    let mapping = std::fs::read_to_string(root().join("examples/legacy/cdc-mysql.toml")).unwrap();
    let source = mapping
        .split("[[subscriber]]")
        .next()
        .unwrap()
        .replace("LEGACY_DB", "no_such_db");
    let checkpoint = dir.join("exhub-state/legacy.json");
    std::fs::create_dir_all(checkpoint.parent().unwrap()).unwrap();
    std::fs::write(&checkpoint, r#"{"position":{"file":"mysql-bin.000001","pos":4}}"#).unwrap();
    let err = exhub_fails_with(&dir, &source, &["source", "legacy", "--drop-slot"]);
    assert!(err.contains("holds nothing on the server"), "{err}");
    assert!(checkpoint.exists(), "the checkpoint was kept");
}

/// The admin address and its metrics token: an open address reached from other machines is
/// warned about; a token file that is missing or readable by others is an error.
#[test]
fn check_guards_the_metrics_endpoint() {
    let dir = scratch("check-admin");
    let cfg = dir.join("routes.toml");
    let demo = std::fs::read_to_string(root().join("routes.toml")).unwrap();
    // Without the tax bureau's console operator (see below for with it).
    let hub_operators_only = demo.replace("org = \"nanhai.tax\"\npassword_hash", "password_hash");
    assert_ne!(hub_operators_only, demo);
    let check_with = |demo: &str, admin: &str, token: Option<&str>| {
        let mut hub = format!("admin = \"{admin}\"");
        if let Some(t) = token {
            hub.push_str(&format!("\nmetrics_token_file = \"{t}\""));
        }
        let text = demo.replace("admin = \"127.0.0.1:8480\"", &hub);
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(crate::exhub_bin())
            .arg("check")
            .env("EXHUB_CONFIG", &cfg)
            .current_dir(root())
            .output()
            .unwrap();
        (out.status.code(), stdout(&out))
    };
    let check = |admin: &str, token: Option<&str>| check_with(&hub_operators_only, admin, token);
    // A department's operator would read every org's metrics beside its console: refused.
    let (code, text) = check_with(&demo, "0.0.0.0:8480", None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("serves the console to departments' operators"), "{text}");
    let (code, text) = check("0.0.0.0:8480", None);
    assert_eq!(code, Some(0), "a warning alone passes: {text}");
    assert!(
        text.contains("warning: hub.admin: \"0.0.0.0:8480\" is reached from other machines"),
        "{text}"
    );
    let (code, text) = check("127.0.0.1:8480", None);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("hub.admin"), "loopback needs no token: {text}");
    let (code, text) = check("0.0.0.0:8480", Some("missing.token"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("error: hub.metrics_token_file"), "{text}");
    let token = dir.join("metrics.token");
    std::fs::write(&token, "a-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, text) = check("0.0.0.0:8480", Some(token.to_str().unwrap()));
    assert_eq!(code, Some(1), "a token others may read: {text}");
    assert!(text.contains("error: hub.metrics_token_file"), "{text}");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, text) = check("0.0.0.0:8480", Some(token.to_str().unwrap()));
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("hub.admin") && !text.contains("metrics_token"), "{text}");
    std::fs::remove_dir_all(dir).ok();
}

/// An approval flow checks, and each way to get one wrong is reported with its place.
#[test]
fn check_knows_approval_flows() {
    let out = exhub(&["check", "--config", "examples/config/approvals.toml"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let good = std::fs::read_to_string(root().join("examples/config/approvals.toml")).unwrap();
    let broken = good
        .replace("\"2026-10-07\"]", "\"2026-10-32\"]")
        .replace(
            "approvers = [\"nanhai.ip\", \"nanhai.info\"]",
            "approvers = [\"nanhai.ip\", \"nanhai.portal\", \"nanhai.nobody\"]",
        )
        .replace("join = \"all\"", "join = \"4\"")
        .replace("deadline = \"3d\"", "deadline = \"3 days\"")
        .replace("name = \"decision\"", "name = \"acceptance\"")
        .replace(
            "applicant_reply_to = \"portal-feed\"",
            "applicant_reply_to = \"portal\"",
        );
    let dir = scratch("check-approvals");
    let config = dir.join("routes.toml");
    std::fs::write(&config, broken).unwrap();
    let out = exhub(&["check", "--config", config.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "calendar: \"2026-10-32\" is not a date",
        "process \"rd_centre\" → stage[1].approvers: org \"nanhai.portal\" may not publish approval.decision",
        "process \"rd_centre\" → stage[1].approvers: org \"nanhai.nobody\" is not defined",
        "process \"rd_centre\" → stage[1].join: 4 approvals of 3 approvers",
        "process \"rd_centre\" → stage[2].deadline: \"3 days\" is not a deadline",
        "process \"rd_centre\" → stage[2].name: stage \"acceptance\" twice",
        "process \"rd_centre\" → applicant_reply_to: subscriber \"portal\" is not defined",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
