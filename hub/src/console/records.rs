//! The console's pages over records: dead letters (browse any DLQ the viewer may see; the hub's
//! operator may send the hub DLQ's back through the hub, one or all, audited) and the archive
//! (search by doc type, org, key and time; one document with its JSON, its XML and its
//! delivery and receipt chain).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Console, Viewer, esc, page, unauthorized};
use crate::archive::Query as ArchiveQuery;

/// Most dead letters a page shows.
const DEAD_LETTERS: usize = 200;
/// Most documents an archive search shows.
const DOCUMENTS: usize = 200;

/// `?queue=hub|<subscriber>`.
#[derive(Debug, Default, Deserialize)]
pub struct QueueQuery {
    queue: Option<String>,
}

/// `POST /console/dead-letters/retry`: one message id, or none for all.
#[derive(Debug, Default, Deserialize)]
pub struct RetryForm {
    id: Option<String>,
}

/// The archive search's filters.
#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    doc_type: Option<String>,
    org: Option<String>,
    key: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

type Shared = State<Arc<Console>>;

impl Console {
    /// The DLQs `viewer` may browse: (label, queue name). The hub's first for the hub's
    /// operator; an org's operator only its own subscribers'.
    fn dead_letter_queues(&self, viewer: &Viewer) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if viewer.org.is_none() {
            out.push(("hub".to_owned(), self.topology.hub_dlq()));
        }
        for (name, org, _) in &self.subscribers {
            if viewer.sees(org) {
                out.push((name.clone(), self.topology.subscriber_dlq(name)));
            }
        }
        out
    }

    async fn amqp(&self) -> Result<lapin::Connection, exhub_connect::AmqpError> {
        exhub_connect::amqp::connect(&self.amqp_url, &format!("exhub-hub-{}-console", std::process::id())).await
    }

    /// Whether `viewer` may see an archived document sent by `sender` and routed to
    /// `deliveries` (subscriber, status), and its content: the hub's operator all; an org's
    /// operator its own org's documents (content too) and those routed to its subscribers (not
    /// their content: a route may mask it for them).
    fn may_see(&self, viewer: &Viewer, sender: &str, deliveries: Option<&Vec<(String, String)>>) -> (bool, bool) {
        if viewer.sees(sender) {
            return (true, true);
        }
        let mine = deliveries
            .into_iter()
            .flatten()
            .any(|(s, _)| self.owners.get(s).is_some_and(|o| viewer.sees(o)));
        (mine, false)
    }

    /// Up to [`DEAD_LETTERS`] dead letters of `queue`, left in it, on a connection of their own.
    async fn dead_letters(&self, queue: &str) -> Result<Vec<crate::dlq::DeadLetter>, exhub_connect::AmqpError> {
        let conn = self.amqp().await?;
        let letters = crate::dlq::list(&conn, queue, DEAD_LETTERS).await;
        let _ = conn.close(200, "listed".into()).await;
        letters
    }
}

pub(super) async fn dead_letters_page(State(c): Shared, headers: HeaderMap, Query(q): Query<QueueQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let queues = c.dead_letter_queues(&viewer);
    let Some((label, queue)) = (match q.queue.as_deref() {
        Some(want) => queues.iter().find(|(l, _)| l == want).cloned(),
        None => queues.first().cloned(),
    }) else {
        return (StatusCode::FORBIDDEN, "not a DLQ this operator may see").into_response();
    };
    let letters = match c.dead_letters(&queue).await {
        Ok(l) => l,
        Err(e) => return super::unavailable(&viewer, &format!("RabbitMQ: {e}")),
    };
    let mut s = String::from("<p>");
    for (l, _) in &queues {
        let _ = write!(
            s,
            "<a href='/console/dead-letters?queue={}'>{}</a> · ",
            super::urlencode(l),
            esc(l)
        );
    }
    let retry = label == "hub" && viewer.org.is_none();
    let _ = write!(
        s,
        "</p><h2>{} ({} shown)</h2>{}<table id=dead-letters><tr><th>id</th><th>type</th><th>reason</th><th>sender</th><th>detail</th><th class=num>bytes</th>{}</tr>",
        esc(&queue),
        letters.len(),
        if retry && !letters.is_empty() {
            "<form method=post action=/console/dead-letters/retry><button id=retry-all>全部重发 Retry all</button></form>"
        } else {
            ""
        },
        if retry { "<th></th>" } else { "" }
    );
    for d in &letters {
        let button = if retry {
            format!(
                "<td><form method=post action=/console/dead-letters/retry><input type=hidden name=id value='{}'><button>重发 Retry</button></form></td>",
                esc(&d.id)
            )
        } else {
            String::new()
        };
        let _ = write!(
            s,
            "<tr class=dead-letter><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td>{button}</tr>",
            esc(&d.id),
            esc(&d.kind),
            esc(&d.reason),
            esc(&d.sender),
            esc(&d.detail),
            d.bytes
        );
    }
    s.push_str("</table>");
    page("死信 Dead letters", Some(&viewer), s, None).into_response()
}

pub(super) async fn dead_letters_api(State(c): Shared, headers: HeaderMap, Query(q): Query<QueueQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return unauthorized();
    };
    let queues = c.dead_letter_queues(&viewer);
    let want = q
        .queue
        .as_deref()
        .unwrap_or(if viewer.org.is_none() { "hub" } else { "" });
    let Some((_, queue)) = queues.iter().find(|(l, _)| l == want) else {
        return (StatusCode::FORBIDDEN, "not a DLQ this operator may see").into_response();
    };
    match c.dead_letters(queue).await {
        Ok(l) => axum::Json(l).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Retries the hub DLQ's messages (one, or all): the hub's operator only; audited.
async fn retry(c: &Console, viewer: &Viewer, id: Option<&str>) -> Result<crate::dlq::Retried, (StatusCode, String)> {
    if viewer.org.is_some() {
        return Err((
            StatusCode::FORBIDDEN,
            "only the hub's operators may retry dead letters".into(),
        ));
    }
    let conn = c
        .amqp()
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let done = crate::dlq::retry(&conn, &c.topology, &c.hub_user, id).await;
    let _ = conn.close(200, "retried".into()).await;
    let done = done.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let queue = c.topology.hub_dlq();
    c.audit(
        &format!("operator:{}", viewer.name),
        "dlq-retried",
        format!("{} from {queue}", done.sent.len()),
        serde_json::json!({ "queue": queue, "documents": done.sent, "asked": id }),
    )
    .await;
    tracing::info!(operator = %viewer.name, retried = done.sent.len(), kept = done.kept, "dead letters retried from the console");
    Ok(done)
}

pub(super) async fn retry_page(State(c): Shared, headers: HeaderMap, Form(form): Form<RetryForm>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let id = form.id.as_deref().filter(|i| !i.is_empty());
    match retry(&c, &viewer, id).await {
        Ok(_) => Redirect::to("/console/dead-letters?queue=hub").into_response(),
        Err((status, why)) => (
            status,
            page(
                "死信 Dead letters",
                Some(&viewer),
                format!("<p class=err>{}</p>", esc(&why)),
                None,
            ),
        )
            .into_response(),
    }
}

pub(super) async fn retry_api(State(c): Shared, headers: HeaderMap, Form(form): Form<RetryForm>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return unauthorized();
    };
    let id = form.id.as_deref().filter(|i| !i.is_empty());
    match retry(&c, &viewer, id).await {
        Ok(done) => axum::Json(done).into_response(),
        Err((status, why)) => (status, why).into_response(),
    }
}

/// The search's query for the archive, and the viewer's scope.
fn archive_query(q: &SearchQuery) -> Result<ArchiveQuery, String> {
    let time = |t: &Option<String>| -> Result<Option<i64>, String> {
        t.as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| crate::stats::parse_time_at(t, 0))
            .transpose()
    };
    let key = match q.key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => Some(
            k.split_once('=')
                .map(|(f, v)| (f.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{k:?} is not FIELD=VALUE"))?,
        ),
        None => None,
    };
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    Ok(ArchiveQuery {
        doc_type: nonempty(&q.doc_type),
        org: nonempty(&q.org),
        since: time(&q.since)?.or_else(|| Some(crate::stats::start_of_today(0))),
        until: time(&q.until)?,
        key,
    })
}

pub(super) async fn archive_page(State(c): Shared, headers: HeaderMap, Query(q): Query<SearchQuery>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let mut s = format!(
        "<form method=get><label>doc type <input name=doc_type value='{}'></label> <label>org <input name=org value='{}'></label> \
         <label>key <input name=key value='{}' placeholder=field=value></label> <label>since <input name=since value='{}' placeholder=2026-12-01></label> \
         <label>until <input name=until value='{}'></label> <button>Search</button></form>",
        value(&q.doc_type),
        value(&q.org),
        value(&q.key),
        value(&q.since),
        value(&q.until)
    );
    let query = match archive_query(&q) {
        Ok(query) => query,
        Err(e) => {
            let _ = write!(s, "<p class=err>{}</p>", esc(&e));
            return (StatusCode::BAD_REQUEST, page("档案 Archive", Some(&viewer), s, None)).into_response();
        }
    };
    let archive = match c.reader().await {
        Ok(a) => a,
        Err(e) => return super::unavailable(&viewer, &e.to_string()),
    };
    let records = match archive.search(&query, None, DOCUMENTS * 5).await {
        Ok(r) => r,
        Err(e) => return super::unavailable(&viewer, &e.to_string()),
    };
    // Whom the page's documents went to, in one read (the hub's operators see all anyway).
    let routed = if viewer.org.is_some() {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        archive.deliveries(&ids).await.unwrap_or_default()
    } else {
        Default::default()
    };
    s.push_str("<table id=documents><tr><th>received</th><th>id</th><th>doc type</th><th>op</th><th>sender</th><th>key</th></tr>");
    let mut shown = 0;
    for r in records {
        if shown == DOCUMENTS {
            break;
        }
        if !c.may_see(&viewer, &r.sender_org, routed.get(&r.id)).0 {
            continue;
        }
        shown += 1;
        let _ = write!(
            s,
            "<tr><td>{}</td><td><a href='/console/archive/{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            exhub_schemas::Timestamp::from_unix_micros(r.received_at),
            super::urlencode(&r.id),
            esc(&r.id),
            esc(&r.doc_type),
            esc(&r.op),
            esc(&r.sender_org),
            esc(&r.key)
        );
    }
    let _ = write!(s, "</table><p class=muted>{shown} shown (at most {DOCUMENTS})</p>");
    page("档案 Archive", Some(&viewer), s, None).into_response()
}

pub(super) async fn document_page(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(viewer) = c.viewer(&headers).await else {
        return Redirect::to("/login").into_response();
    };
    let archive = match c.reader().await {
        Ok(a) => a,
        Err(e) => return super::unavailable(&viewer, &e.to_string()),
    };
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            page("档案 Archive", Some(&viewer), "<p>No such document.</p>".into(), None),
        )
            .into_response()
    };
    let Ok(Some((r, user))) = archive.get(&id).await else {
        return not_found();
    };
    let deliveries = archive
        .deliveries(std::slice::from_ref(&r.id))
        .await
        .unwrap_or_default();
    let (visible, content) = c.may_see(&viewer, &r.sender_org, deliveries.get(&r.id));
    if !visible {
        // Not told apart from a document that does not exist.
        return not_found();
    }
    let receipts = archive.receipts(&r.id).await.unwrap_or_default();
    let mut s = format!(
        "<table id=document><tr><th>id</th><td>{}</td></tr><tr><th>doc type</th><td>{}</td></tr><tr><th>op</th><td>{}</td></tr>\
         <tr><th>sender</th><td>{} (AMQP user {})</td></tr><tr><th>key</th><td>{}</td></tr><tr><th>received</th><td>{}</td></tr>\
         <tr><th>content hash</th><td>{}</td></tr></table><h2>送达 Deliveries</h2><table id=chain><tr><th>subscriber</th><th>status</th><th>receipt</th></tr>",
        esc(&r.id),
        esc(&r.doc_type),
        esc(&r.op),
        esc(&r.sender_org),
        esc(&user),
        esc(&r.key),
        exhub_schemas::Timestamp::from_unix_micros(r.received_at),
        esc(&r.content_hash)
    );
    for (sub, status) in deliveries.get(&r.id).into_iter().flatten() {
        if !content && !c.owners.get(sub).is_some_and(|o| viewer.sees(o)) {
            continue;
        }
        let receipt = receipts
            .iter()
            .filter(|x| &x.subscriber == sub)
            .map(|x| {
                format!(
                    "{} at {}{}",
                    x.outcome,
                    exhub_schemas::Timestamp::from_unix_micros(x.received_at),
                    x.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(sub),
            esc(status),
            esc(&receipt)
        );
    }
    s.push_str("</table>");
    if content {
        let limits = exhub_schemas::Limits::default();
        match exhub_schemas::decode(&r.raw, &c.registry, &limits) {
            Ok(doc) => {
                let json = String::from_utf8_lossy(exhub_schemas::json::encode_pretty(&doc).as_bytes()).into_owned();
                let xml = exhub_schemas::xml::encode(&doc, &c.registry);
                let _ = write!(
                    s,
                    "<h2>JSON</h2><pre id=json>{}</pre><h2>XML</h2><pre id=xml>{}</pre>",
                    esc(&json),
                    esc(&xml)
                );
            }
            Err(e) => {
                let _ = write!(s, "<p class=err>{}</p>", esc(&e.to_string()));
            }
        }
    } else {
        s.push_str("<p class=muted>The content is shown to the sender's operators and the hub's; your subscriber received it as its route says (masked fields left out).</p>");
    }
    page("档案 Archive", Some(&viewer), s, None).into_response()
}
