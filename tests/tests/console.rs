//! The supervision console as its users meet it: over HTTP (a login before anything, each org's
//! operator seeing only its own flows, the statistics as CSV, every login audited), and in a
//! real browser (Debian's headless chromium) that renders the overview with the exchange's
//! flows and an open alert.

use std::time::{Duration, Instant};

use crate::exchange::{ArchiveKind, Exchange, tax_doc};
use crate::hub::{admin_address, http};

/// Two departments' feeds, and two operators: the hub's `chief` and the commerce bureau's.
fn graph() -> String {
    let chief = exhub_hub::console::hash_password("chief-password").unwrap();
    let commerce = exhub_hub::console::hash_password("commerce-password").unwrap();
    format!(
        r#"
[[subscriber]]
name = "commerce-feed"
org = "nanhai.commerce"
kind = "amqp"

[[subscriber]]
name = "tax-feed"
org = "nanhai.tax"
kind = "amqp"

[[route]]
name = "registrations"
doc_types = ["tax.registration"]
to = ["commerce-feed", "tax-feed"]

[[operator]]
name = "chief"
password_hash = "{chief}"

[[operator]]
name = "commerce"
org = "nanhai.commerce"
password_hash = "{commerce}"
"#
    )
}

/// An exchange with a console, one registration routed to both feeds and one malformed message
/// in the hub's DLQ; returns it with its admin address and the registration's id once the
/// DLQ's alert is open.
async fn exchange(tag: &str) -> (Exchange, String, String) {
    let mut ex = Exchange::new(tag, ArchiveKind::Sqlite, "admin = \"127.0.0.1:0\"", &graph());
    ex.start_hub().await;
    let addr = admin_address(&ex);
    let (id, doc) = tax_doc("nanhai.tax", 1, "南海");
    ex.publish(vec![(doc, ex.props(&id)), (b"{not json".to_vec(), ex.props("m1"))])
        .await;
    // The queue depths are read every 10 s; then the built-in rule raises dead_letters@hub.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = http(&addr, "GET", "/api/v1/overview", &basic("chief", "chief-password"), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.contains("dead_letters@hub") {
            break;
        }
        assert!(Instant::now() < deadline, "no alert: {}", r.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (ex, addr, id)
}

fn basic(name: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

/// Nothing without a login; a wrong password is refused and audited; a session shows the whole
/// exchange to the hub's operator, and only its own org's to a department's; the statistics
/// come as CSV; logging out ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_needs_a_login_and_shows_each_org_its_own() {
    let (ex, addr, id) = exchange("console").await;
    // Without a login: the pages send to the login form, the API refuses.
    let r = http(&addr, "GET", "/console", "", "").await;
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/login")));
    for path in ["/api/v1/overview", "/api/v1/alerts", "/api/v1/stats?format=csv"] {
        let r = http(&addr, "GET", path, "", "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(!r.body.contains("commerce-feed"), "{path}");
    }
    let r = http(&addr, "GET", "/api/v1/overview", &basic("chief", "wrong"), "").await;
    assert_eq!(r.status, 401);
    // Malformed and oversized logins are refused without a session, and nothing else stops.
    let r = http(&addr, "POST", "/login", "", "name=chief").await;
    assert!(
        (400..500).contains(&r.status) && r.header("set-cookie").is_none(),
        "{}",
        r.status
    );
    let huge = format!("name=chief&password={}", "x".repeat(3 << 20));
    let r = http(&addr, "POST", "/login", "", &huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = http(&addr, "GET", "/api/v1/overview", &basic(&"x".repeat(10_000), "y"), "").await;
    assert_eq!(r.status, 401);
    assert_eq!(http(&addr, "GET", "/login", "", "").await.status, 200);
    let r = http(&addr, "POST", "/login", "", "name=chief&password=wrong").await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    assert!(r.body.contains("Wrong name or password"), "{}", r.body);

    // The hub's operator logs in and sees every flow and the open alert.
    let r = http(&addr, "POST", "/login", "", "name=chief&password=chief-password").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite"), "{set}");
    let session = set.split(';').next().unwrap().to_owned();
    let cookie = format!("Cookie: {session}\r\n");
    let r = http(&addr, "GET", "/console", &cookie, "").await;
    assert_eq!(r.status, 200);
    for shown in [
        "data-subscriber='commerce-feed'",
        "data-subscriber='tax-feed'",
        "dead_letters@hub",
        "南海区税务局",
    ] {
        assert!(r.body.contains(shown), "{shown} not in {}", r.body);
    }

    // The commerce bureau's operator sees its own feed only, and no alert of the hub's.
    let commerce = basic("commerce", "commerce-password");
    let r = http(&addr, "GET", "/api/v1/overview", &commerce, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let o: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let names = |key: &str, field: &str| -> Vec<String> {
        o[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(names("subscribers", "name"), ["commerce-feed"]);
    assert!(names("open_alerts", "alert").is_empty(), "{o}");
    assert_eq!(o["orgs"][0][0], "nanhai.commerce");
    assert_eq!(o["orgs"].as_array().unwrap().len(), 1, "{o}");
    let r = http(&addr, "GET", "/api/v1/alerts", &commerce, "").await;
    assert_eq!(r.body, "[]");

    // Statistics: the registration went to both feeds; the commerce bureau sees its copy only.
    let yesterday = exhub_schemas::Timestamp::from_unix_micros(exhub_schemas::time::unix_micros_now() - 86_400_000_000)
        .to_string()[..10]
        .to_owned();
    let stats = |who: String| {
        let (addr, yesterday) = (addr.clone(), yesterday.clone());
        async move {
            let r = http(
                &addr,
                "GET",
                &format!("/api/v1/stats?by=org&since={yesterday}"),
                &who,
                "",
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let all = stats(cookie.clone()).await;
    let tax = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "nanhai.tax")
        .unwrap();
    assert_eq!(
        (tax["documents"].as_u64(), tax["routed"].as_u64()),
        (Some(1), Some(2)),
        "{all}"
    );
    let mine = stats(commerce.clone()).await;
    let tax = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "nanhai.tax")
        .unwrap();
    assert_eq!(tax["routed"].as_u64(), Some(1), "{mine}");
    assert!(
        tax["refused"].as_object().unwrap().is_empty(),
        "another org's refusals: {mine}"
    );
    let r = http(
        &addr,
        "GET",
        &format!("/api/v1/stats?by=org&since={yesterday}&format=csv"),
        &cookie,
        "",
    )
    .await;
    assert_eq!(r.header("content-type").as_deref(), Some("text/csv; charset=utf-8"));
    let mut lines = r.body.lines();
    assert_eq!(
        lines.next(),
        Some("key,documents,refused,routed,applied,refused_by_subscribers,applied_p50_ms,applied_p95_ms")
    );
    assert!(lines.any(|l| l.starts_with("nanhai.tax,1,")), "{}", r.body);
    let r = http(&addr, "GET", &format!("/console/stats?since={yesterday}"), &cookie, "").await;
    assert!(r.status == 200 && r.body.contains("<table id=stats>") && r.body.contains("nanhai.tax"));

    // Dead letters: the hub's operator sees the hub's DLQ and may send it back; the commerce
    // bureau's sees only its own feed's DLQ and may not.
    let r = http(&addr, "GET", "/console/dead-letters", &cookie, "").await;
    assert!(
        r.status == 200 && r.body.contains("class=dead-letter") && r.body.contains("malformed"),
        "{}",
        r.body
    );
    assert!(r.body.contains("id=retry-all"), "{}", r.body);
    let r = http(&addr, "GET", "/console/dead-letters?queue=hub", &commerce, "").await;
    assert_eq!(r.status, 403);
    let r = http(&addr, "GET", "/api/v1/dead-letters?queue=commerce-feed", &commerce, "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let r = http(&addr, "POST", "/api/v1/dead-letters/retry", &commerce, "id=m1").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let chief = basic("chief", "chief-password");
    let r = http(&addr, "POST", "/api/v1/dead-letters/retry", &chief, "id=m1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(done["sent"][0][0], "m1", "{done}");

    // The archive: the hub's operator reads the registration whole, JSON and XML, with its
    // chain; the commerce bureau, whose feed got a copy, sees its own part of the chain but not
    // the content; an alert of the hub's is not there for it at all.
    let r = http(&addr, "GET", "/console/archive?since=2000-01-01", &cookie, "").await;
    assert!(r.body.contains(&id), "{}", r.body);
    let doc = format!("/console/archive/{id}");
    let r = http(&addr, "GET", &doc, &cookie, "").await;
    assert!(
        r.status == 200 && r.body.contains("<pre id=json>") && r.body.contains("<pre id=xml>"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("commerce-feed") && r.body.contains("tax-feed"),
        "{}",
        r.body
    );
    let r = http(&addr, "GET", &doc, &commerce, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("<pre id=json>") && r.body.contains("commerce-feed"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("tax-feed"), "another org's subscriber: {}", r.body);
    let search = "/console/archive?doc_type=supervision.alert&since=2000-01-01";
    let r = http(&addr, "GET", search, &cookie, "").await;
    let alert_id = r
        .body
        .split("/console/archive/")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_owned();
    let r = http(&addr, "GET", &format!("/console/archive/{alert_id}"), &commerce, "").await;
    assert_eq!(r.status, 404, "{}", r.body);

    // Logging out ends the session.
    let r = http(&addr, "POST", "/logout", &cookie, "").await;
    assert_eq!(r.status, 303);
    let r = http(&addr, "GET", "/console", &cookie, "").await;
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/login")));

    // Every login is in the audit log; no password is.
    let out = ex.exhub(&["audit", "list", "--limit", "50"]);
    let audit = crate::stdout(&out);
    assert!(
        audit.contains("console-login-refused") && audit.contains("console-login\t"),
        "{audit}"
    );
    assert!(audit.contains("operator:chief\tdlq-retried"), "{audit}");
    let log = ex.hub_log(0);
    assert!(!log.contains("chief-password") && !audit.contains("chief-password"));
}

/// The overview as a person sees it: headless chromium logs in through the form, renders the
/// page and takes a screenshot; the rendered DOM shows the exchange's flows and the open alert.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_renders_the_overview_with_flows_and_an_alert() {
    let (ex, addr, _) = exchange("console-browser").await;
    let login = ex.dir.join("login.html");
    std::fs::write(
        &login,
        format!(
            "<!doctype html><form method=post action='http://{addr}/login'>\
             <input name=name value=chief><input name=password value=chief-password></form>\
             <script>document.forms[0].submit()</script>"
        ),
    )
    .unwrap();
    let screenshot = ex.dir.join("overview.png");
    let chromium = |what: &str| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                &format!("--user-data-dir={}", ex.dir.join("chromium").display()),
                "--virtual-time-budget=10000",
                "--window-size=1400,1000",
                what,
            ])
            .arg(format!("file://{}", login.display()))
            .output()
            .expect("chromium runs (scripts/services.sh installs Debian's chromium)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium("--dump-dom");
    for shown in [
        "<h1>总览 Overview</h1>",
        "data-subscriber=\"commerce-feed\"",
        "data-subscriber=\"tax-feed\"",
        "南海区市场监督管理局",
        "dead_letters@hub",
    ] {
        assert!(dom.contains(shown), "{shown} not in the rendered DOM:\n{dom}");
    }
    chromium(&format!("--screenshot={}", screenshot.display()));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
}
