//! The supervision console (电子监察) on the admin address: pages a person reads and the JSON
//! API behind them (`/api/v1/…`), served by the hub itself with nothing to build and nothing
//! fetched from elsewhere (the CSS is in this file; pages refresh themselves without script).
//!
//! - **Access.** Every page and API call needs an operator of routes.toml (`[[operator]]`, an
//!   Argon2 password hash): a session cookie after `POST /login` (HttpOnly, SameSite=Lax, 8
//!   hours), or HTTP Basic on the API for tools. An org's operator sees only its org's sources,
//!   subscribers, alerts and figures; an operator without an org is the hub's and sees all.
//!   Logins, failed or not, are recorded in the audit log.
//! - **Pages.** `/console` (the overview: departments → hub → subscribers, each part's state and
//!   figures, open alerts; `?screen=big` for the supervision office's wall, refreshing every 5
//!   s), `/console/alerts` (open and past), `/console/stats` (统计, with a CSV download),
//!   `/console/dead-letters` and `/console/archive` ([`records`]).
//! - **Figures.** Parts from their heartbeats ([`crate::parts`]), queue depths and overdue
//!   copies from the readings ([`crate::alerts::Readings`]), alerts and statistics from the
//!   archive (the one truth every hub process shares), on a connection of the console's own so
//!   that a page never waits behind the workers' writes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertRow, Metric, Readings};
use crate::archive::{Archive, ArchiveError, AuditEntry};
use crate::config::Config;
use crate::parts::{PartView, Parts};
use crate::stats::By;

mod records;

/// How long a console session lasts.
pub const SESSION: Duration = Duration::from_secs(8 * 3600);
/// Most sessions held at once (the oldest goes first).
pub const MAX_SESSIONS: usize = 1000;
/// How far back the alerts page looks.
pub const ALERT_DAYS: i64 = 30;
/// Most sessions of one operator (its oldest goes first).
pub const SESSIONS_PER_OPERATOR: usize = 20;
/// Failed logins of one name before its logins are refused unchecked …
pub const MAX_FAILURES: u32 = 5;
/// … for this long.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most statistics days one console request reads.
pub const MAX_STATS_DAYS: i64 = 92;
/// Most alert changes the console reads (the newest are dropped past it; the archive has all).
pub const MAX_ALERT_ROWS: usize = 20_000;
/// The session cookie's name.
const COOKIE: &str = "exhub_console";

/// The key failed logins of `name` are counted under: at most 100 bytes, so that names sent
/// to be refused cannot make the count large.
fn failure_key(name: &str) -> std::borrow::Cow<'_, str> {
    exhub_connect::wire::excerpt(name, 100)
}

/// Whether `text` is an Argon2 password hash the console can check.
pub fn parse_hash(text: &str) -> Result<(), String> {
    let hash = PasswordHash::new(text).map_err(|e| format!("not a PHC password hash: {e}"))?;
    match hash.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(format!("a {other} hash; the console takes Argon2 (argon2id)")),
    }
}

/// Whether `hash` has the Argon2 parameters `exhub operator hash` uses (those of the hash
/// checked for unknown names, so that a login's time does not tell whether a name exists).
pub fn has_default_params(hash: &str) -> bool {
    let (Ok(ours), Ok(theirs)) = (PasswordHash::new(NOBODY), PasswordHash::new(hash)) else {
        return false;
    };
    ours.algorithm == theirs.algorithm && ours.params == theirs.params
}

/// An Argon2id hash of `password` with a fresh random salt (`exhub operator hash`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (false for a hash that does not parse).
fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, checked for unknown names so that they take as long.
const NOBODY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$5bM2QkKhKmdG9IX0ll2gUFcVg3C0M5p/Ow4cXJKpAqo";

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Wrong name or password.
    Wrong,
    /// Too many failures for the name just now.
    Throttled,
}

struct Operator {
    hash: String,
    org: Option<String>,
}

struct Session {
    viewer: Viewer,
    expires: Instant,
}

/// Who is looking.
#[derive(Debug, Clone, Serialize)]
pub struct Viewer {
    /// The operator's name.
    pub name: String,
    /// The org whose flows it sees, or none: the hub's operator, who sees all.
    pub org: Option<String>,
}

impl Viewer {
    fn sees(&self, org: &str) -> bool {
        self.org.as_deref().is_none_or(|o| o == org)
    }
}

/// A subscriber as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberView {
    /// Its name.
    pub name: String,
    /// Its org.
    pub org: String,
    /// `amqp`, `postgres`, `mysql`, `mssql`.
    pub kind: String,
    /// Messages waiting in its queue (none when not read yet).
    pub queue_messages: Option<f64>,
    /// Messages in its DLQ.
    pub dead_letters: Option<f64>,
    /// Age of its oldest copy without a receipt, seconds (database subscribers).
    pub overdue_seconds: Option<f64>,
}

/// The overview's figures (`GET /api/v1/overview`).
#[derive(Debug, Serialize)]
pub struct Overview {
    /// Who asked.
    pub viewer: Viewer,
    /// The orgs it sees: id and name.
    pub orgs: Vec<(String, String)>,
    /// Sources and database sinks, from their heartbeats.
    pub parts: Vec<PartView>,
    /// Subscribers with their queues.
    pub subscribers: Vec<SubscriberView>,
    /// Alerts not cleared, newest change first.
    pub open_alerts: Vec<AlertRow>,
}

/// The console: who may log in, who is, and where the figures come from.
pub struct Console {
    operators: HashMap<String, Operator>,
    sessions: Mutex<HashMap<String, Session>>,
    parts: Arc<Parts>,
    readings: Arc<Readings>,
    /// The hub's archive, for audit records (signed as the hub signs them).
    audit: Archive,
    /// The archive's URL, for reading on a connection of the console's own.
    archive_url: String,
    reader: tokio::sync::OnceCell<Archive>,
    orgs: Vec<(String, String)>,
    /// Source name → org.
    source_orgs: HashMap<String, String>,
    /// Subscriber name → org.
    owners: HashMap<String, String>,
    subscribers: Vec<(String, String, String)>,
    hub_dlq: String,
    orgs_by_user: HashMap<String, String>,
    /// The hub's AMQP URL, for the dead letters.
    amqp_url: String,
    topology: exhub_connect::Topology,
    hub_user: String,
    registry: Arc<exhub_schemas::Registry>,
    /// Recent failed logins per name: (failures, since).
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Argon2 checks at once (each takes 19 MiB and some milliseconds).
    checking: tokio::sync::Semaphore,
}

impl Console {
    /// The console of `config`, showing `parts` and `readings`, auditing into `audit`.
    pub fn new(
        config: &Config,
        registry: Arc<exhub_schemas::Registry>,
        parts: Arc<Parts>,
        readings: Arc<Readings>,
        audit: Archive,
    ) -> Console {
        let operators = config
            .operators
            .iter()
            .map(|o| {
                let op = Operator {
                    hash: o.password_hash.clone(),
                    org: o.org.clone(),
                };
                (o.name.clone(), op)
            })
            .collect();
        let source_orgs = config.sources.iter().map(|s| (s.name.clone(), s.org.clone())).collect();
        let owners = config
            .subscribers
            .iter()
            .map(|s| (s.name().to_owned(), s.org().to_owned()))
            .collect();
        Console {
            operators,
            sessions: Mutex::new(HashMap::new()),
            parts,
            readings,
            audit,
            archive_url: config.hub.archive.expose().to_owned(),
            reader: tokio::sync::OnceCell::new(),
            orgs: config.orgs.iter().map(|o| (o.id.clone(), o.name.clone())).collect(),
            source_orgs,
            owners,
            amqp_url: config.hub.amqp.expose().to_owned(),
            topology: config.hub.topology(),
            hub_user: config.hub.user(),
            registry,
            failures: Mutex::new(HashMap::new()),
            checking: tokio::sync::Semaphore::new(2),
            subscribers: config
                .subscribers
                .iter()
                .map(|s| (s.name().to_owned(), s.org().to_owned(), s.kind.clone()))
                .collect(),
            hub_dlq: config.hub.topology().hub_dlq(),
            orgs_by_user: config.orgs_by_user(),
        }
    }

    /// The console's routes, to be merged into the admin server's.
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/console") }))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/console", get(overview_page))
            .route("/console/alerts", get(alerts_page))
            .route("/console/stats", get(stats_page))
            .route("/api/v1/overview", get(overview_api))
            .route("/api/v1/alerts", get(alerts_api))
            .route("/api/v1/stats", get(stats_api))
            .route("/console/dead-letters", get(records::dead_letters_page))
            .route("/console/dead-letters/retry", post(records::retry_page))
            .route("/console/archive", get(records::archive_page))
            .route("/console/archive/{id}", get(records::document_page))
            .route("/api/v1/dead-letters", get(records::dead_letters_api))
            .route("/api/v1/dead-letters/retry", post(records::retry_api))
            .with_state(self)
    }

    /// The operator `name` if `password` is theirs (Argon2, off the async threads, two at a
    /// time). After [`MAX_FAILURES`] failures for a name within [`FAILURE_WINDOW`], its logins
    /// are refused unchecked until the window passes.
    async fn check(&self, name: &str, password: &str) -> Result<Viewer, Refused> {
        if self.throttled(name) {
            return Err(Refused::Throttled);
        }
        let Ok(_permit) = self.checking.acquire().await else {
            return Err(Refused::Wrong);
        };
        let viewer = self.verify_password(name, password).await;
        if viewer.is_none() {
            self.failed(name);
        }
        viewer.ok_or(Refused::Wrong)
    }

    fn throttled(&self, name: &str) -> bool {
        let failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failures
            .get(failure_key(name).as_ref())
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn failed(&self, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= MAX_SESSIONS {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if failures.len() >= MAX_SESSIONS {
            return;
        }
        let entry = failures
            .entry(failure_key(name).into_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    async fn verify_password(&self, name: &str, password: &str) -> Option<Viewer> {
        let (hash, org) = match self.operators.get(name) {
            Some(op) => (op.hash.clone(), op.org.clone()),
            None => (NOBODY.to_owned(), None),
        };
        let known = self.operators.contains_key(name);
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password))
            .await
            .unwrap_or(false);
        (ok && known).then(|| Viewer {
            name: name.to_owned(),
            org,
        })
    }

    /// Who the request comes from: its session cookie, or HTTP Basic (for tools).
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        if let Some(token) = cookie(headers, COOKIE) {
            let key = digest(&token);
            let mut sessions = self.lock();
            match sessions.get(&key) {
                Some(s) if s.expires > Instant::now() => return Some(s.viewer.clone()),
                Some(_) => {
                    sessions.remove(&key);
                }
                None => {}
            }
        }
        let basic = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (name, password) = text.split_once(':')?;
        self.check(name, password).await.ok()
    }

    /// A new session for `viewer`; its token.
    fn open_session(&self, viewer: Viewer) -> Option<String> {
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).ok()?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // One operator's many logins evict only its own sessions.
        let own = sessions.values().filter(|s| s.viewer.name == viewer.name).count();
        if own >= SESSIONS_PER_OPERATOR
            && let Some(oldest) = sessions
                .iter()
                .filter(|(_, s)| s.viewer.name == viewer.name)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        sessions.insert(
            digest(&token),
            Session {
                viewer,
                expires: now + SESSION,
            },
        );
        Some(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an operator's action in the audit log (a failure is logged, never shown).
    async fn audit(&self, actor: &str, action: &str, subject: String, detail: serde_json::Value) {
        let entry = AuditEntry::new(actor, action, subject, detail);
        if let Err(e) = self.audit.audit(&[entry]).await {
            tracing::warn!(error = %e, action, "a console action could not be audited");
        }
    }

    async fn reader(&self) -> Result<&Archive, ArchiveError> {
        self.reader.get_or_try_init(|| Archive::open(&self.archive_url)).await
    }

    /// The org of a scope (`source:<name>`, `sink:<name>`, `subscriber:<name>`); none for `hub`.
    fn scope_org(&self, scope: &str) -> Option<&str> {
        match scope.split_once(':')? {
            ("source", name) => self.source_orgs.get(name),
            (_, name) => self.owners.get(name),
        }
        .map(String::as_str)
    }

    fn sees_scope(&self, viewer: &Viewer, scope: &str) -> bool {
        match self.scope_org(scope) {
            Some(org) => viewer.sees(org),
            None => viewer.org.is_none(),
        }
    }

    /// Every alert change of the last [`ALERT_DAYS`] the viewer may see, oldest first.
    async fn alert_history(&self, viewer: &Viewer) -> Result<Vec<AlertRow>, ArchiveError> {
        let archive = self.reader().await?;
        let since = exhub_schemas::time::unix_micros_now() - ALERT_DAYS * 86_400_000_000;
        let mut rows = crate::alerts::history(archive, since, MAX_ALERT_ROWS).await?;
        rows.retain(|row| self.sees_scope(viewer, &row.scope));
        Ok(rows)
    }

    /// The overview's figures for `viewer`.
    async fn overview(&self, viewer: Viewer) -> Result<Overview, ArchiveError> {
        let mut open_alerts = crate::alerts::open(self.alert_history(&viewer).await?);
        open_alerts.sort_by(|a, b| b.at.cmp(&a.at));
        let readings: HashMap<(Metric, String), f64> =
            self.readings.all().into_iter().map(|(m, s, v)| ((m, s), v)).collect();
        let reading = |m: Metric, name: &str| readings.get(&(m, format!("subscriber:{name}"))).copied();
        let subscribers = self
            .subscribers
            .iter()
            .filter(|(_, org, _)| viewer.sees(org))
            .map(|(name, org, kind)| SubscriberView {
                name: name.clone(),
                org: org.clone(),
                kind: kind.clone(),
                queue_messages: reading(Metric::QueueMessages, name),
                dead_letters: reading(Metric::DeadLetters, name),
                overdue_seconds: reading(Metric::DeliveryOverdueSeconds, name),
            })
            .collect();
        Ok(Overview {
            orgs: self.orgs.iter().filter(|(id, _)| viewer.sees(id)).cloned().collect(),
            parts: self.parts.view().into_iter().filter(|p| viewer.sees(&p.org)).collect(),
            subscribers,
            open_alerts,
            viewer,
        })
    }

    /// The statistics `q` asks for, as `viewer` may see them.
    async fn stats(&self, viewer: &Viewer, q: &StatsQuery) -> Result<Vec<crate::stats::Row>, String> {
        let offset = crate::stats::parse_offset(q.offset.as_deref().unwrap_or("+00:00"))?;
        let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
            Some(t) => crate::stats::parse_time_at(t, offset)?,
            None => crate::stats::start_of_today(offset),
        };
        let until = match q.until.as_deref().filter(|s| !s.is_empty()) {
            Some(t) => crate::stats::parse_time_at(t, offset)?,
            None => exhub_schemas::time::unix_micros_now() + 1,
        };
        if until - since > MAX_STATS_DAYS * 86_400_000_000 {
            return Err(format!(
                "at most {MAX_STATS_DAYS} days at a time in the console (exhub stats reads any period)"
            ));
        }
        let by: By = q.by.as_deref().unwrap_or("org").parse()?;
        let archive = self.reader().await.map_err(|e| e.to_string())?;
        let mut facts = archive
            .stats_facts(since, until, &self.hub_dlq, &self.orgs_by_user)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(org) = &viewer.org {
            // Its own documents, and the copies routed to its own subscribers.
            let mine = |s: &String| self.owners.get(s) == Some(org);
            facts.documents.retain_mut(|d| {
                if &d.org != org {
                    d.subscribers.retain(mine);
                    d.receipts.retain(|(s, _, _)| mine(s));
                    return !d.subscribers.is_empty();
                }
                true
            });
            facts.refusals.retain(|r| &r.org == org);
        }
        Ok(crate::stats::aggregate(&facts, by, offset))
    }
}

/// `?since=&until=&by=&offset=&format=` of the statistics.
#[derive(Debug, Default, Deserialize)]
pub struct StatsQuery {
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
    offset: Option<String>,
    format: Option<String>,
}

/// `?screen=big`.
#[derive(Debug, Default, Deserialize)]
pub struct ScreenQuery {
    screen: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

type Shared = State<Arc<Console>>;

async fn login_page() -> Html<String> {
    page("登录 Log in", None, login_form(None), None)
}

async fn login(State(c): Shared, Form(form): Form<LoginForm>) -> Response {
    let name = exhub_connect::wire::excerpt(&form.name, 100).into_owned();
    match c.check(&name, &form.password).await {
        Ok(viewer) => {
            c.audit(
                &format!("operator:{name}"),
                "console-login",
                format!("{name} logged in to the console"),
                serde_json::json!({ "org": viewer.org }),
            )
            .await;
            tracing::info!(operator = %name, "console login");
            let Some(token) = c.open_session(viewer) else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness for a session").into_response();
            };
            let cookie = format!(
                "{COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}",
                SESSION.as_secs()
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
        }
        Err(Refused::Throttled) => {
            let body = login_form(Some(
                "Too many failed logins: wait a minute. 登录失败次数过多，请稍后再试。",
            ));
            (StatusCode::TOO_MANY_REQUESTS, page("登录 Log in", None, body, None)).into_response()
        }
        Err(Refused::Wrong) => {
            // Audited until the name is throttled: a guesser cannot grow the log without bound.
            c.audit(
                &format!("operator:{name}"),
                "console-login-refused",
                format!("a login as {name:?} was refused"),
                serde_json::json!({}),
            )
            .await;
            tracing::warn!(operator = %name, "console login refused");
            let body = login_form(Some("Wrong name or password. 用户名或密码错误。"));
            (StatusCode::UNAUTHORIZED, page("登录 Log in", None, body, None)).into_response()
        }
    }
}

async fn logout(State(c): Shared, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, COOKIE) {
        c.lock().remove(&digest(&token));
    }
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, expired)], Redirect::to("/login")).into_response()
}

async fn overview_page(State(c): Shared, headers: HeaderMap, Query(q): Query<ScreenQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let big = q.screen.as_deref() == Some("big");
    match c.overview(viewer.clone()).await {
        Ok(o) => page(
            "总览 Overview",
            Some(&viewer),
            render_overview(&o, big),
            big.then_some(5),
        )
        .into_response(),
        Err(e) => unavailable(&viewer, &e.to_string()),
    }
}

async fn alerts_page(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    match c.alert_history(&viewer).await {
        Ok(rows) => page("预警 Alerts", Some(&viewer), render_alerts(&rows), Some(30)).into_response(),
        Err(e) => unavailable(&viewer, &e.to_string()),
    }
}

async fn stats_page(State(c): Shared, headers: HeaderMap, Query(q): Query<StatsQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    match c.stats(&viewer, &q).await {
        Ok(rows) => page("统计 Statistics", Some(&viewer), render_stats(&rows, &q), None).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            page(
                "统计 Statistics",
                Some(&viewer),
                format!("<p class=err>{}</p>", esc(&e)),
                None,
            ),
        )
            .into_response(),
    }
}

async fn overview_api(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return unauthorized();
    };
    match c.overview(viewer).await {
        Ok(o) => axum::Json(o).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn alerts_api(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return unauthorized();
    };
    match c.alert_history(&viewer).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn stats_api(State(c): Shared, headers: HeaderMap, Query(q): Query<StatsQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return unauthorized();
    };
    match c.stats(&viewer, &q).await {
        Ok(rows) if q.format.as_deref() == Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"exhub-stats.csv\""),
            ],
            crate::stats::csv(&rows),
        )
            .into_response(),
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"exhub\"")],
        "log in: a console session, or HTTP Basic with an operator's name and password",
    )
        .into_response()
}

fn unavailable(viewer: &Viewer, why: &str) -> Response {
    let body = format!("<p class=err>The archive cannot be read now: {}</p>", esc(why));
    (
        StatusCode::SERVICE_UNAVAILABLE,
        page("exhub", Some(viewer), body, Some(10)),
    )
        .into_response()
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn digest(token: &str) -> String {
    exhub_connect::sign::digest(token.as_bytes())
}

/// `text` safe inside HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font-family:"Noto Sans CJK SC","Noto Sans",sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#0f3057;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}
header form{display:inline}header button{background:none;border:1px solid #fff;color:#fff;cursor:pointer}
main{padding:16px 20px}h1{font-size:20px}h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;background:#fff;width:100%}th,td{border:1px solid #d5dbe1;padding:4px 8px;text-align:left;font-size:14px}
th{background:#e9eef3}.num{text-align:right}
.flow{display:flex;gap:24px;align-items:stretch}.col{flex:1;display:flex;flex-direction:column;gap:8px}
.box{background:#fff;border:1px solid #d5dbe1;border-left:8px solid #9aa5b1;padding:6px 10px}
.hub{border-left-color:#0f3057;font-weight:bold;flex:1;display:flex;align-items:center;justify-content:center;font-size:18px}
.green{border-left-color:#2e9d48}.yellow{border-left-color:#e0a800}.red{border-left-color:#d0312d}.grey{border-left-color:#9aa5b1}
.badge{display:inline-block;padding:0 8px;border-radius:8px;color:#fff;font-size:12px}
.b-green{background:#2e9d48}.b-yellow{background:#e0a800}.b-red{background:#d0312d}.b-grey{background:#9aa5b1}
.err{color:#d0312d}.muted{color:#66788a;font-size:12px}
.chart{background:#fff;border:1px solid #d5dbe1;padding:8px}.bar-row{display:flex;align-items:center;gap:8px;margin:4px 0}
.bar-key{width:220px;font-size:13px;overflow:hidden}.bars{flex:1;display:flex;flex-direction:column;gap:2px}
.bar{display:block;height:10px;min-width:1px}.docs{background:#0f3057}.applied{background:#2e9d48}.legend{display:inline-block;width:16px}
.big{font-size:22px}.big td,.big th{font-size:20px}.big h2{font-size:26px}
"#;

/// A whole page: the header (with the operator and the links when logged in), `body`, and a
/// refresh every `refresh` seconds.
fn page(title: &str, viewer: Option<&Viewer>, body: String, refresh: Option<u32>) -> Html<String> {
    let refresh = refresh.map_or(String::new(), |s| format!("<meta http-equiv=refresh content={s}>"));
    let nav = match viewer {
        Some(v) => format!(
            "<a href=/console>总览 Overview</a><a href=/console/alerts>预警 Alerts</a>\
             <a href=/console/stats>统计 Statistics</a><a href=/console/dead-letters>死信 Dead letters</a>\
             <a href=/console/archive>档案 Archive</a><a href=/console?screen=big>大屏 Big screen</a>\
             <span class=who>{} ({})</span><form method=post action=/logout><button>退出 Log out</button></form>",
            esc(&v.name),
            esc(v.org.as_deref().unwrap_or("hub"))
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=zh><head><meta charset=utf-8>{refresh}<title>{} · exhub 电子监察</title>\
         <style>{STYLE}</style></head><body><header><strong>exhub 电子监察</strong>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    ))
}

fn login_form(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| format!("<p class=err>{}</p>", esc(e)));
    format!(
        "{error}<form method=post action=/login><p><label>用户名 Name <input name=name autofocus></label></p>\
         <p><label>密码 Password <input name=password type=password></label></p><p><button>登录 Log in</button></p></form>"
    )
}

/// The colour of a level or a part's health.
fn colour(level: &str) -> &'static str {
    match level {
        "red" | "down" => "red",
        "yellow" => "yellow",
        "up" | "clear" => "green",
        _ => "grey",
    }
}

fn figure(v: Option<f64>) -> String {
    match v {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "–".to_owned(),
    }
}

fn render_overview(o: &Overview, big: bool) -> String {
    let level_of = |scope: &str| {
        o.open_alerts
            .iter()
            .filter(|a| a.scope == scope)
            .map(|a| a.level.as_str())
            .max_by_key(|l| if *l == "red" { 2 } else { 1 })
    };
    let mut s = String::from(if big { "<div class=big>" } else { "<div>" });
    // The exchange as a picture: departments and their sources → hub → subscribers.
    s.push_str("<div class=flow id=flow><div class=col><h2>部门 Departments</h2>");
    for (id, name) in &o.orgs {
        let _ = write!(
            s,
            "<div class='box org'><strong>{}</strong> <span class=muted>{}</span>",
            esc(name),
            esc(id)
        );
        for p in o
            .parts
            .iter()
            .filter(|p| &p.org == id && p.role == exhub_connect::status::Role::Source)
        {
            let scope = format!("source:{}", p.name);
            let c = colour(level_of(&scope).unwrap_or(p.health));
            let lag = p.status.as_ref().and_then(|s| s.source.as_ref()).and_then(|f| f.lag_ms);
            let _ = write!(
                s,
                "<div class='box source {c}' data-part='{}'>⇢ {} <span class='badge b-{c}'>{}</span> <span class=muted>lag {} s</span></div>",
                esc(&p.name),
                esc(&p.name),
                p.health,
                figure(lag.map(|ms| ms as f64 / 1000.0))
            );
        }
        s.push_str("</div>");
    }
    s.push_str("</div><div class=col><h2>交换中心 Hub</h2><div class='box hub'>exhub</div></div><div class=col><h2>订阅方 Subscribers</h2>");
    for sub in &o.subscribers {
        let scope = format!("subscriber:{}", sub.name);
        let sink = o
            .parts
            .iter()
            .find(|p| p.role == exhub_connect::status::Role::Sink && p.name == sub.name);
        let state = level_of(&scope)
            .or_else(|| level_of(&format!("sink:{}", sub.name)))
            .unwrap_or(sink.map_or("up", |p| p.health));
        let c = colour(state);
        let _ = write!(
            s,
            "<div class='box subscriber {c}' data-subscriber='{}'><strong>{}</strong> <span class=muted>{} · {}</span><br>\
             queue {} · DLQ {} · overdue {} s</div>",
            esc(&sub.name),
            esc(&sub.name),
            esc(&sub.org),
            esc(&sub.kind),
            figure(sub.queue_messages),
            figure(sub.dead_letters),
            figure(sub.overdue_seconds)
        );
    }
    s.push_str("</div></div>");
    // Open alerts.
    s.push_str("<h2>未解除的预警 Open alerts</h2>");
    if o.open_alerts.is_empty() {
        s.push_str("<p id=no-alerts>None. 无预警。</p>");
    } else {
        s.push_str("<table id=open-alerts><tr><th>level</th><th>alert</th><th>since</th><th>message</th></tr>");
        for a in &o.open_alerts {
            let c = colour(&a.level);
            let _ = write!(
                s,
                "<tr class=alert><td><span class='badge b-{c}'>{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.level),
                esc(&a.alert),
                esc(&a.at),
                esc(&a.message)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</div>");
    // Parts in detail.
    s.push_str("<h2>数据源与落地 Sources and sinks</h2><table id=parts><tr><th>part</th><th>org</th><th>health</th><th>state</th>\
                <th>position</th><th class=num>lag s</th><th class=num>events/s</th><th class=num>log retained</th><th>snapshot</th><th class=num>applied</th></tr>");
    for p in &o.parts {
        let st = p.status.as_ref();
        let src = st.and_then(|s| s.source.as_ref());
        let snk = st.and_then(|s| s.sink.as_ref());
        let snapshot = src.and_then(|f| f.snapshot.as_ref()).map_or(String::new(), |sn| {
            format!(
                "{} <progress max={} value={}></progress> {}/{}",
                esc(&sn.table),
                sn.rows_total.max(sn.rows_done),
                sn.rows_done,
                sn.rows_done,
                sn.rows_total
            )
        });
        let _ = write!(
            s,
            "<tr><td>{} {}</td><td>{}</td><td><span class='badge b-{}'>{}</span></td><td>{}</td><td>{}</td><td class=num>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td>{}</td><td class=num>{}</td></tr>",
            p.role.as_str(),
            esc(&p.name),
            esc(&p.org),
            colour(p.health),
            p.health,
            st.map_or(String::new(), |s| format!("{:?}", s.state).to_lowercase()),
            esc(src.and_then(|f| f.position.as_deref()).unwrap_or("")),
            figure(src.and_then(|f| f.lag_ms).map(|ms| ms as f64 / 1000.0)),
            figure(src.map(|f| f.events_per_second)),
            figure(
                src.and_then(|f| f.log.as_ref())
                    .and_then(|l| l.retained_bytes)
                    .map(|b| b as f64)
            ),
            snapshot,
            figure(snk.map(|f| f.applied as f64)),
        );
    }
    s.push_str("</table>");
    s
}

fn render_alerts(rows: &[AlertRow]) -> String {
    let mut s = String::from(
        "<table id=alerts><tr><th>at</th><th>level</th><th>from</th><th>alert</th><th class=num>value</th><th class=num>threshold</th><th>message</th></tr>",
    );
    for a in rows.iter().rev().take(500) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><span class='badge b-{}'>{}</span></td><td>{}</td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
            esc(&a.at),
            colour(&a.level),
            esc(&a.level),
            esc(&a.previous),
            esc(&a.alert),
            esc(&a.value),
            esc(a.threshold.as_deref().unwrap_or("")),
            esc(&a.message)
        );
    }
    s.push_str("</table>");
    s
}

fn render_stats(rows: &[crate::stats::Row], q: &StatsQuery) -> String {
    let by = q.by.as_deref().unwrap_or("org");
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let mut s = format!(
        "<form method=get><label>since <input name=since value='{}' placeholder=2026-12-01></label> \
         <label>until <input name=until value='{}'></label> <label>by <select name=by>{}</select></label> \
         <label>offset <input name=offset value='{}' placeholder=+08:00 size=6></label> <button>Show</button></form>",
        value(&q.since),
        value(&q.until),
        ["org", "doc_type", "subscriber", "day"]
            .iter()
            .map(|b| format!("<option{}>{b}</option>", if *b == by { " selected" } else { "" }))
            .collect::<String>(),
        value(&q.offset),
    );
    let query = format!(
        "since={}&until={}&by={}&offset={}",
        urlencode(q.since.as_deref().unwrap_or("")),
        urlencode(q.until.as_deref().unwrap_or("")),
        urlencode(by),
        urlencode(q.offset.as_deref().unwrap_or(""))
    );
    let _ = write!(
        s,
        "<p><a id=csv href='/api/v1/stats?{query}&format=csv'>CSV</a></p><table id=stats><tr>"
    );
    for c in crate::stats::COLUMNS {
        let _ = write!(s, "<th>{c}</th>");
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in crate::stats::cells(r) {
            let _ = write!(s, "<td>{}</td>", esc(&c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    // A chart of the same rows: documents, and what the subscribers applied of their copies.
    let most = rows.iter().map(|r| r.documents.max(r.routed)).max().unwrap_or(0).max(1) as f64;
    s.push_str("<h2>图表 Chart</h2><div id=chart class=chart>");
    for r in rows {
        let width = |n: u64| format!("{:.1}%", n as f64 / most * 100.0);
        let _ = write!(
            s,
            "<div class=bar-row><span class=bar-key>{}</span><span class=bars>\
             <span class='bar docs' style='width:{}' title='documents {}'></span>\
             <span class='bar applied' style='width:{}' title='applied {} of {} routed'></span></span></div>",
            esc(&r.key),
            width(r.documents),
            r.documents,
            width(r.applied),
            r.applied,
            r.routed
        );
    }
    s.push_str("</div><p class=muted><span class='bar docs legend'></span> documents <span class='bar applied legend'></span> copies applied</p>");
    s
}

/// `text` as a URL query value.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_made_here_verifies_and_nothing_else_does() {
        let hash = hash_password("correct horse").unwrap();
        assert!(parse_hash(&hash).is_ok());
        assert!(has_default_params(&hash));
        let other = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$5bM2QkKhKmdG9IX0ll2gUFcVg3C0M5p/Ow4cXJKpAqo";
        assert!(parse_hash(other).is_ok() && !has_default_params(other));
        assert!(verify(&hash, "correct horse"));
        assert!(!verify(&hash, "Correct horse"));
        assert!(!verify(NOBODY, ""));
        assert!(parse_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
        assert!(parse_hash("plain text").is_err());
    }

    #[test]
    fn text_is_escaped_and_cookies_are_read() {
        assert_eq!(esc("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; exhub_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
