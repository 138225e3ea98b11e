//! `exhub check`: the whole-graph check of routes.toml. Every problem is collected — syntax,
//! unknown keys, then references between orgs, sources, subscribers, routes and schemas — each
//! with its line:column and a path like `route "tax-registrations" → to[1]`, before anything
//! starts (vector's `validate` is the model).

use std::collections::{BTreeMap, BTreeSet};

use exhub_schemas::{Registry, Schema};

use exhub_connect::adapter::{Catalog, Role};

use crate::config::{AMQP_KIND, Config, ConfigFile, Positions, Problem, Seg, Severity, valid_name};
use crate::filter::Filter;
use crate::secret::SecretUrl;

/// What a successful check counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Organisations.
    pub orgs: usize,
    /// Sources.
    pub sources: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Routes.
    pub routes: usize,
    /// Distinct doc types routed or published.
    pub doc_types: usize,
}

struct Checker<'a> {
    positions: Positions<'a>,
    registry: &'a Registry,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn report(&mut self, severity: Severity, at: &[Seg], path: String, message: String) {
        let position = self.positions.position(at);
        self.problems.push(Problem {
            severity,
            position,
            path,
            message,
        });
    }
    fn error(&mut self, at: &[Seg], path: String, message: String) {
        self.report(Severity::Error, at, path, message);
    }
    fn warn(&mut self, at: &[Seg], path: String, message: String) {
        self.report(Severity::Warning, at, path, message);
    }

    fn schema(&mut self, doc_type: &str, version: Option<u32>, at: &[Seg], path: &str) -> Option<&'a Schema> {
        // Borrowed from the registry (not self) so the caller can keep reporting.
        let registry = self.registry;
        let found = match version {
            Some(v) => registry.get(doc_type, v),
            None => registry.latest(doc_type),
        };
        if found.is_none() {
            let v = version.map(|v| format!(" version {v}")).unwrap_or_default();
            let known = self.registry.list().join(", ");
            self.error(
                at,
                path.to_owned(),
                format!("doc type {doc_type:?}{v} has no schema (known: {known})"),
            );
        }
        found
    }

    fn url(&mut self, url: &SecretUrl, schemes: &[&str], at: &[Seg], path: String) {
        match url.parse() {
            Err(e) => self.error(at, path, format!("URL does not parse: {e}")),
            Ok(u) if !schemes.contains(&u.scheme()) => self.error(
                at,
                path,
                format!("URL scheme {:?} is not one of {}", u.scheme(), schemes.join(", ")),
            ),
            Ok(_) => {}
        }
    }

    fn duplicates<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>, key: &str) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, name) in names.enumerate() {
            if let Some(first) = seen.insert(name, i) {
                self.error(
                    &[section.into(), i.into(), key.into()],
                    format!("{section}[{i}]"),
                    format!("{key} {name:?} is already used by {section}[{first}]"),
                );
                seen.insert(name, first);
            }
        }
    }
}

/// Checks a loaded config against the schemas and the database kinds `catalog` knows (each
/// kind checks its entries' URLs and options). Returns every problem (errors and warnings);
/// the summary is meaningful when there is no error.
pub fn check(file: &ConfigFile, registry: &Registry, catalog: &dyn Catalog) -> (Vec<Problem>, Summary) {
    let Some(config) = &file.config else {
        return (file.problems.clone(), Summary::default());
    };
    let mut c = Checker {
        positions: file.positions(),
        registry,
        problems: file.problems.clone(),
    };
    check_config(&mut c, config);
    check_kinds(&mut c, config, catalog);
    check_trust(&mut c, config, &file.base_dir());
    check_keys(&mut c, config, &file.base_dir());
    check_masked_keys(&mut c, config);
    for (at, path, message) in crate::tls::problems(config) {
        c.error(&at, path, message);
    }
    let doc_types: BTreeSet<&str> = config
        .orgs
        .iter()
        .flat_map(|o| o.publishes.iter())
        .chain(config.routes.iter().flat_map(|r| r.doc_types.iter()))
        .map(String::as_str)
        .collect();
    let summary = Summary {
        orgs: config.orgs.len(),
        sources: config.sources.len(),
        subscribers: config.subscribers.len(),
        routes: config.routes.len(),
        doc_types: doc_types.len(),
    };
    c.problems
        .sort_by_key(|p| (p.position.unwrap_or((usize::MAX, 0)), p.severity));
    (c.problems, summary)
}

/// The whole graph, section by section: each section's names, references and schemas.
fn check_config(c: &mut Checker<'_>, config: &Config) {
    check_hub(c, config);
    let orgs = check_orgs(c, config);
    check_sources(c, config, &orgs);
    let fed = check_routes(c, config, &orgs);
    check_subscribers(c, config, &orgs, &fed);
    check_alerts(c, config);
    check_operators(c, config);
    check_processes(c, config);
}

/// `[[process]]` and `[calendar]`: unique names, what [`crate::process::Process::compile`]
/// finds wrong, a start doc type with a schema.
fn check_processes(c: &mut Checker<'_>, config: &Config) {
    c.duplicates("process", config.processes.iter().map(|p| p.name.as_str()), "name");
    if let Err(e) = crate::process::Calendar::new(&config.calendar) {
        c.error(&["calendar".into()], "calendar".into(), e);
    }
    for (i, p) in config.processes.iter().enumerate() {
        let label = format!("process {:?}", p.name);
        let start = p.start.as_deref().unwrap_or(crate::process::REQUEST_DOC_TYPE);
        c.schema(start, None, &["process".into(), i.into(), "start".into()], &label);
        if let Err(problems) = crate::process::Process::compile(p, config) {
            for (field, message) in problems {
                c.error(&["process".into(), i.into()], format!("{label} → {field}"), message);
            }
        }
    }
}

/// `[[operator]]`: unique names, a password hash that is an Argon2 PHC string, an org that
/// exists.
fn check_operators(c: &mut Checker<'_>, config: &Config) {
    c.duplicates("operator", config.operators.iter().map(|o| o.name.as_str()), "name");
    for (i, op) in config.operators.iter().enumerate() {
        let label = format!("operator {:?}", op.name);
        if let Err(e) = crate::console::parse_hash(&op.password_hash) {
            c.error(
                &["operator".into(), i.into(), "password_hash".into()],
                label.clone(),
                format!("{e} (exhub operator hash prints one)"),
            );
        } else if !crate::console::has_default_params(&op.password_hash) {
            c.warn(
                &["operator".into(), i.into(), "password_hash".into()],
                label.clone(),
                "other Argon2 parameters than exhub operator hash uses: a login's time may tell \
                 whether a name exists (make the hash with exhub operator hash)"
                    .into(),
            );
        }
        if let Some(org) = &op.org
            && config.org(org).is_none()
        {
            c.error(
                &["operator".into(), i.into(), "org".into()],
                label,
                format!("org {org:?} is not defined"),
            );
        }
    }
}

/// `[[alert]]`: a known metric, a scope that exists and that the metric is read for, and
/// thresholds in the metric's order (yellow before red).
fn check_alerts(c: &mut Checker<'_>, config: &Config) {
    use crate::alerts::Metric;
    for (i, alert) in config.alerts.iter().enumerate() {
        let at = |field: &str| vec![Seg::from("alert"), i.into(), field.into()];
        let label = format!("alert[{i}]");
        let Some(metric) = Metric::parse(&alert.metric) else {
            let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            c.error(
                &at("metric"),
                label,
                format!("unknown metric {:?} (known: {})", alert.metric, known.join(", ")),
            );
            continue;
        };
        if let Some(scope) = &alert.scope {
            let (kind, name) = scope.split_once(':').unwrap_or((scope.as_str(), ""));
            let exists = match kind {
                "source" => config.sources.iter().any(|s| s.name == name),
                "sink" => config.subscribers.iter().any(|s| s.name() == name && s.is_database()),
                "subscriber" => config.subscribers.iter().any(|s| s.name() == name),
                "hub" => name.is_empty(),
                _ => false,
            };
            if !metric.scope_kinds().contains(&kind) {
                c.error(
                    &at("scope"),
                    label.clone(),
                    format!(
                        "{} is read for scopes of kind {}, not {scope:?}",
                        metric.name(),
                        metric.scope_kinds().join(" or ")
                    ),
                );
            } else if !exists {
                c.error(
                    &at("scope"),
                    label.clone(),
                    format!("{scope:?} names no {kind} of this exchange (source:<name>, sink:<name>, subscriber:<name> or hub)"),
                );
            }
        }
        let rules = crate::alerts::Rules::new(std::slice::from_ref(alert), config.hub.heartbeat());
        let t = rules.for_scope(metric, alert.scope.as_deref().unwrap_or(""));
        if !t.yellow.is_finite() || !t.red.is_finite() || t.yellow < 0.0 || t.red < 0.0 {
            c.error(&at("yellow"), label, "thresholds must be numbers of 0 or more".into());
        } else if metric.lower_is_worse() && t.yellow < t.red {
            c.error(
                &at("red"),
                label,
                format!(
                    "{} is worse when lower: red ({}) must be at most yellow ({})",
                    metric.name(),
                    t.red,
                    t.yellow
                ),
            );
        } else if !metric.lower_is_worse() && t.yellow > t.red {
            c.error(
                &at("red"),
                label,
                format!("red ({}) must be at least yellow ({})", t.red, t.yellow),
            );
        }
    }
}

/// `[hub]`: its URLs and admin address.
fn check_hub(c: &mut Checker<'_>, config: &Config) {
    c.url(
        &config.hub.amqp,
        &["amqp", "amqps"],
        &["hub".into(), "amqp".into()],
        "hub.amqp".into(),
    );
    c.url(
        &config.hub.archive,
        &["sqlite", "postgres", "postgresql"],
        &["hub".into(), "archive".into()],
        "hub.archive".into(),
    );
    if let Some(admin) = &config.hub.admin {
        match admin.parse::<std::net::SocketAddr>() {
            Err(_) => c.error(
                &["hub".into(), "admin".into()],
                "hub.admin".into(),
                format!("{admin:?} is not an address like 127.0.0.1:8480"),
            ),
            // Departments' operators reach a console on other machines: the metrics beside it
            // would show them every org's figures.
            Ok(addr)
                if !addr.ip().is_loopback()
                    && config.hub.metrics_token_file.is_none()
                    && config.operators.iter().any(|o| o.org.is_some()) =>
            {
                c.error(
                    &["hub".into(), "admin".into()],
                    "hub.admin".into(),
                    format!(
                        "{admin:?} serves the console to departments' operators on other machines: set \
                         metrics_token_file, or the metrics beside it show every org's figures to them"
                    ),
                )
            }
            Ok(addr) if !addr.ip().is_loopback() && config.hub.metrics_token_file.is_none() => c.warn(
                &["hub".into(), "admin".into()],
                "hub.admin".into(),
                format!(
                    "{admin:?} is reached from other machines, and without metrics_token_file anyone who \
                     reaches it reads the metrics (orgs, doc types, subscribers, volumes)"
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// Unique names in every section; each org's published doc types have schemas. The orgs by id.
fn check_orgs<'a>(c: &mut Checker<'_>, config: &'a Config) -> BTreeMap<&'a str, &'a crate::config::OrgConfig> {
    c.duplicates("org", config.orgs.iter().map(|o| o.id.as_str()), "id");
    c.duplicates("source", config.sources.iter().map(|s| s.name.as_str()), "name");
    c.duplicates("subscriber", config.subscribers.iter().map(|s| s.name()), "name");
    c.duplicates("route", config.routes.iter().map(|r| r.name.as_str()), "name");

    let orgs: BTreeMap<&str, &crate::config::OrgConfig> = config.orgs.iter().map(|o| (o.id.as_str(), o)).collect();
    for (i, org) in config.orgs.iter().enumerate() {
        if org.id == crate::alerts::HUB_ORG {
            c.error(
                &["org".into(), i.into(), "id".into()],
                format!("org {:?}", org.id),
                format!(
                    "{:?} is the hub's own org (its supervision.alert documents); choose another id",
                    org.id
                ),
            );
        }
        for (j, doc_type) in org.publishes.iter().enumerate() {
            if doc_type == crate::alerts::ALERT_DOC_TYPE {
                c.error(
                    &["org".into(), i.into(), "publishes".into(), j.into()],
                    format!("org {:?} → publishes[{j}]", org.id),
                    "supervision.alert is the hub's own (org exhub.hub): no org may publish it".into(),
                );
            }
            c.schema(
                doc_type,
                None,
                &["org".into(), i.into(), "publishes".into(), j.into()],
                &format!("org {:?} → publishes[{j}]", org.id),
            );
        }
    }
    orgs
}

/// `[[source]]`: its org exists and may publish what its tables map to; its mappings fit their
/// schemas.
fn check_sources(c: &mut Checker<'_>, config: &Config, orgs: &BTreeMap<&'_ str, &'_ crate::config::OrgConfig>) {
    for (i, source) in config.sources.iter().enumerate() {
        let s = source;
        let here = |rest: &[Seg]| [&["source".into(), i.into()][..], rest].concat();
        let label = format!("source {:?}", s.name);
        let org = orgs.get(s.org.as_str()).copied();
        if org.is_none() {
            c.error(
                &here(&["org".into()]),
                format!("{label} → org"),
                format!("org {:?} is not defined", s.org),
            );
        }
        if let Some(tz) = &s.time_zone
            && crate::config::parse_offset(tz).is_none()
        {
            c.error(
                &here(&["time_zone".into()]),
                label.clone(),
                format!("time_zone {tz:?} is not a UTC offset like \"+08:00\""),
            );
        }
        let mut tables = BTreeSet::new();
        for (t, table) in s.tables.iter().enumerate() {
            let at = |k: &str| here(&["table".into(), t.into(), k.into()]);
            let tlabel = format!("{label} → table[{t}] ({})", table.table);
            if !tables.insert(table.table.as_str()) {
                c.error(
                    &at("table"),
                    tlabel.clone(),
                    format!("table {:?} is mapped twice", table.table),
                );
            }
            if let Some(org) = org
                && !org.publishes.contains(&table.doc_type)
            {
                c.error(
                    &at("doc_type"),
                    tlabel.clone(),
                    format!(
                        "org {:?} may not publish {:?} (add it to its publishes)",
                        org.id, table.doc_type
                    ),
                );
            }
            if table.key.is_empty() {
                c.error(&at("key"), tlabel.clone(), "key needs at least one column".into());
            }
            for field in table.values.keys() {
                if !table.fields.contains_key(field) {
                    c.error(
                        &here(&["table".into(), t.into(), "values".into(), field.as_str().into()]),
                        format!("{tlabel} → values.{field}"),
                        format!("code table for {field:?}, which is not a mapped field"),
                    );
                }
            }
            let columns: BTreeSet<&str> = table.fields.values().map(String::as_str).collect();
            for (k, col) in table.key.iter().enumerate() {
                if !columns.contains(col.as_str()) {
                    c.error(
                        &here(&["table".into(), t.into(), "key".into(), k.into()]),
                        format!("{tlabel} → key[{k}]"),
                        format!("key column {col:?} is not mapped to any field"),
                    );
                }
            }
            let Some(schema) = c.schema(&table.doc_type, table.schema_version, &at("doc_type"), &tlabel) else {
                continue;
            };
            let body = schema.body();
            for field in table.fields.keys() {
                if !body.properties.contains_key(field) {
                    let p = here(&["table".into(), t.into(), "fields".into(), field.as_str().into()]);
                    c.error(
                        &p,
                        format!("{tlabel} → fields.{field}"),
                        format!("{} v{} has no field {field:?}", schema.doc_type(), schema.version()),
                    );
                }
            }
            let missing: Vec<&str> = body
                .required
                .iter()
                .filter(|r| !table.fields.contains_key(*r))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                c.error(
                    &at("fields"),
                    format!("{tlabel} → fields"),
                    format!(
                        "required field(s) of {} v{} not mapped: {}",
                        schema.doc_type(),
                        schema.version(),
                        missing.join(", ")
                    ),
                );
            }
        }
    }
}

/// `[[route]]`: doc types, senders, filters, subscribers and masks exist and fit. Per
/// subscriber, the doc types routes send it.
fn check_routes<'a>(
    c: &mut Checker<'_>,
    config: &'a Config,
    orgs: &BTreeMap<&'_ str, &'_ crate::config::OrgConfig>,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let subscribers: BTreeSet<&str> = config.subscribers.iter().map(|s| s.name()).collect();
    let mut fed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let here = |rest: &[Seg]| [&["route".into(), i.into()][..], rest].concat();
        let label = format!("route {:?}", route.name);
        if route.doc_types.is_empty() {
            c.error(&here(&["doc_types".into()]), label.clone(), "doc_types is empty".into());
        }
        if route.to.is_empty() {
            c.error(&here(&["to".into()]), label.clone(), "to is empty".into());
        }
        let mut schemas = Vec::new();
        for (j, doc_type) in route.doc_types.iter().enumerate() {
            let at = here(&["doc_types".into(), j.into()]);
            if let Some(s) = c.schema(doc_type, None, &at, &format!("{label} → doc_types[{j}]")) {
                schemas.push(s);
            }
            if doc_type != crate::alerts::ALERT_DOC_TYPE && !config.orgs.iter().any(|o| o.publishes.contains(doc_type))
            {
                c.warn(
                    &at,
                    format!("{label} → doc_types[{j}]"),
                    format!("no org publishes {doc_type:?}"),
                );
            }
        }
        if let Some(from) = &route.from {
            for (j, org) in from.iter().enumerate() {
                if !orgs.contains_key(org.as_str()) && org != crate::alerts::HUB_ORG {
                    c.error(
                        &here(&["from".into(), j.into()]),
                        format!("{label} → from[{j}]"),
                        format!("org {org:?} is not defined"),
                    );
                }
            }
        }
        for (j, sub) in route.to.iter().enumerate() {
            if subscribers.contains(sub.as_str()) {
                fed.entry(sub.as_str())
                    .or_default()
                    .extend(route.doc_types.iter().map(String::as_str));
            } else {
                c.error(
                    &here(&["to".into(), j.into()]),
                    format!("{label} → to[{j}]"),
                    format!("subscriber {sub:?} is not defined"),
                );
            }
        }
        let has_field = |path: &[String]| {
            schemas.iter().any(|s| {
                let mut shape = s.body_shape();
                path.iter().all(|name| match shape {
                    exhub_schemas::shape::Shape::Map(o) => o.properties.get(name).map(|f| shape = &f.shape).is_some(),
                    _ => false,
                })
            })
        };
        if let Some(src) = &route.filter {
            match Filter::parse(src) {
                Err(e) => c.error(&here(&["where".into()]), format!("{label} → where"), e.to_string()),
                Ok(f) => {
                    for path in f.fields() {
                        if !schemas.is_empty() && !has_field(path) {
                            c.error(
                                &here(&["where".into()]),
                                format!("{label} → where"),
                                format!(
                                    "body.{} is not a field of {}",
                                    path.join("."),
                                    route.doc_types.join(" or ")
                                ),
                            );
                        }
                    }
                }
            }
        }
        for (sub, fields) in &route.mask {
            let at = here(&["mask".into(), sub.as_str().into()]);
            if !route.to.contains(sub) {
                c.error(
                    &at,
                    format!("{label} → mask.{sub}"),
                    format!("{sub:?} is not in this route's to"),
                );
            }
            for field in fields {
                if !schemas.is_empty() && !has_field(std::slice::from_ref(field)) {
                    c.error(
                        &at,
                        format!("{label} → mask.{sub}"),
                        format!("{field:?} is not a field of {}", route.doc_types.join(" or ")),
                    );
                }
            }
        }
    }
    fed
}

/// `[[subscriber]]`: its org exists, routes feed it, its tables' doc types are routed to it.
fn check_subscribers(
    c: &mut Checker<'_>,
    config: &Config,
    orgs: &BTreeMap<&'_ str, &'_ crate::config::OrgConfig>,
    fed: &BTreeMap<&str, BTreeSet<&str>>,
) {
    for (i, sub) in config.subscribers.iter().enumerate() {
        let here = |rest: &[Seg]| [&["subscriber".into(), i.into()][..], rest].concat();
        let label = format!("subscriber {:?}", sub.name());
        if !orgs.contains_key(sub.org()) {
            c.error(
                &here(&["org".into()]),
                format!("{label} → org"),
                format!("org {:?} is not defined", sub.org()),
            );
        }
        let routed = fed.get(sub.name());
        // A process feeds its applicants' reply subscribers and its approvers' inboxes.
        let by_process = config.processes.iter().any(|p| {
            p.applicant_reply_to.as_deref() == Some(sub.name())
                || p.inboxes.values().any(|i| i == sub.name())
                || p.stages
                    .iter()
                    .flat_map(|st| &st.approvers)
                    .any(|a| a == sub.org() && !p.inboxes.contains_key(a))
        });
        if routed.is_none() && !by_process {
            c.warn(
                &here(&["name".into()]),
                label.clone(),
                "no route feeds this subscriber".into(),
            );
        }
        if let Some((db, _)) = sub.database() {
            for (j, apply) in db.apply.iter().enumerate() {
                let at = here(&["apply".into(), j.into(), "doc_type".into()]);
                let alabel = format!("{label} → apply[{j}]");
                c.schema(&apply.doc_type, None, &at, &alabel);
                if routed.is_some_and(|r| !r.contains(apply.doc_type.as_str())) {
                    c.warn(
                        &at,
                        alabel,
                        format!("no route sends {:?} to this subscriber", apply.doc_type),
                    );
                }
            }
        }
    }
}

/// Every source and database sink names a kind the binary knows; the kind checks the entry's
/// URL and its own options (an option of another kind is an unknown key there). A plain AMQP
/// subscriber has no URL, tables or options.
fn check_kinds(c: &mut Checker<'_>, config: &Config, catalog: &dyn Catalog) {
    let (source_kinds, sink_kinds) = catalog.kinds();
    for (i, s) in config.sources.iter().enumerate() {
        let here = |k: &str| vec!["source".into(), i.into(), k.into()];
        let label = format!("source {:?}", s.name);
        match catalog.kind(Role::Source, &s.kind) {
            None => c.error(
                &here("kind"),
                format!("{label} → kind"),
                format!("unknown source kind {:?} (known: {})", s.kind, source_kinds.join(", ")),
            ),
            Some(kind) => {
                for message in kind.check(Role::Source, s.url.expose(), &s.options) {
                    let at = unknown_key(&message).map_or_else(|| here("url"), &here);
                    c.error(&at, label.clone(), message);
                }
            }
        }
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        let here = |k: &str| vec!["subscriber".into(), i.into(), k.into()];
        let label = format!("subscriber {:?}", sub.name);
        if sub.kind == AMQP_KIND {
            let mut extra: Vec<&str> = sub.options.keys().map(String::as_str).collect();
            if sub.url.is_some() {
                extra.push("url");
            }
            if sub.amqp.is_some() {
                extra.push("amqp");
            }
            if !sub.apply.is_empty() {
                extra.push("apply");
            }
            for key in extra {
                c.error(
                    &here(key),
                    label.clone(),
                    format!("unknown field `{key}`: a plain AMQP subscriber reads its queue with its own client"),
                );
            }
            continue;
        }
        match catalog.kind(Role::Sink, &sub.kind) {
            None => c.error(
                &here("kind"),
                format!("{label} → kind"),
                format!(
                    "unknown subscriber kind {:?} (known: {AMQP_KIND}, {})",
                    sub.kind,
                    sink_kinds.join(", ")
                ),
            ),
            Some(kind) => match &sub.url {
                None => c.error(&here("kind"), label, "a database subscriber needs its url".into()),
                Some(url) => {
                    for message in kind.check(Role::Sink, url.expose(), &sub.options) {
                        let at = unknown_key(&message).map_or_else(|| here("url"), &here);
                        c.error(&at, label.clone(), message);
                    }
                }
            },
        }
    }
    // The archive is a PostgreSQL database reached like a PostgreSQL subscriber.
    if matches!(config.hub.archive.scheme().as_deref(), Some("postgres" | "postgresql"))
        && let Some(kind) = catalog.kind(Role::Sink, "postgres")
    {
        for message in kind.check(
            Role::Sink,
            config.hub.archive.expose(),
            &exhub_connect::adapter::Options::new(),
        ) {
            c.error(&["hub".into(), "archive".into()], "hub.archive".into(), message);
        }
    }
}

/// The key an "unknown field `x`" message names.
fn unknown_key(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split_once('`').map(|(k, _)| k)
}

/// Identity and secrets: names that become queue names, file names and permission patterns are
/// plain; every org has its own AMQP user, never the hub's; a source or sink logs in as its org;
/// password files are private.
fn check_trust(c: &mut Checker<'_>, config: &Config, base: &std::path::Path) {
    const NAME_RULE: &str = "lower-case letters, digits, '.', '_' and '-' only (at most 100, not starting with '.')";
    let name = |c: &mut Checker<'_>, at: &[Seg], path: String, what: &str, value: &str| {
        if !valid_name(value) {
            let shown = exhub_connect::wire::excerpt(value, 64);
            c.error(at, path, format!("{what} {shown:?}: {NAME_RULE}"));
        }
    };
    if let Err(e) = config.metrics_token(base) {
        c.error(
            &["hub".into(), "metrics_token_file".into()],
            "hub.metrics_token_file".into(),
            e.to_string(),
        );
    }
    let hub_user = config.hub.user();
    if let Some(prefix) = &config.hub.prefix {
        name(
            c,
            &["hub".into(), "prefix".into()],
            "hub.prefix".into(),
            "prefix",
            prefix,
        );
    }
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, org) in config.orgs.iter().enumerate() {
        let label = format!("org {:?}", org.id);
        name(c, &["org".into(), i.into(), "id".into()], label.clone(), "id", &org.id);
        let user = org.amqp_user();
        let at: [Seg; 3] = [
            "org".into(),
            i.into(),
            if org.amqp_user.is_some() { "amqp_user" } else { "id" }.into(),
        ];
        name(c, &at, label.clone(), "AMQP user", user);
        if user == hub_user {
            c.error(
                &at,
                label.clone(),
                format!("AMQP user {user:?} is the hub's own user: an org must have a login of its own"),
            );
        }
        if let Some(other) = users.insert(user, &org.id) {
            c.error(
                &at,
                label.clone(),
                format!("AMQP user {user:?} is already org {other:?}'s: each org needs its own"),
            );
        }
        let file = config.org_password_file(org, base);
        if file.exists()
            && let Err(e) = crate::secret::read_password_file(&file)
        {
            c.error(&at, label, e.to_string());
        }
    }
    let endpoint = |c: &mut Checker<'_>, url: Option<&crate::secret::SecretUrl>, org: &str, at: &[Seg], label: &str| {
        let Some(url) = url else { return };
        let user = url.username();
        let org_user = config.org(org).map(|o| o.amqp_user()).unwrap_or(org);
        if user.is_empty() && (url.has_password() || url.password_from().is_some()) {
            c.error(
                at,
                label.to_owned(),
                format!("has a password but no user, so RabbitMQ would take it as guest's: name {org_user:?}"),
            );
        } else if !user.is_empty() && user != org_user {
            c.error(
                at,
                label.to_owned(),
                format!("logs in as AMQP user {user:?}, but its org {org:?} is {org_user:?}: an adapter logs in as its own org"),
            );
        }
    };
    for (i, source) in config.sources.iter().enumerate() {
        let s = source;
        let label = format!("source {:?}", s.name);
        name(
            c,
            &["source".into(), i.into(), "name".into()],
            label.clone(),
            "name",
            &s.name,
        );
        endpoint(
            c,
            s.amqp.as_ref(),
            &s.org,
            &["source".into(), i.into(), "amqp".into()],
            &format!("{label} → amqp"),
        );
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        let label = format!("subscriber {:?}", sub.name());
        name(
            c,
            &["subscriber".into(), i.into(), "name".into()],
            label.clone(),
            "name",
            sub.name(),
        );
        if sub.is_database() {
            endpoint(
                c,
                sub.amqp.as_ref(),
                sub.org(),
                &["subscriber".into(), i.into(), "amqp".into()],
                &format!("{label} → amqp"),
            );
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        name(
            c,
            &["route".into(), i.into(), "name".into()],
            format!("route {:?}", route.name),
            "name",
            &route.name,
        );
    }
    // Password files named by URLs must be private.
    let mut urls: Vec<(&crate::secret::SecretUrl, Vec<Seg>)> = vec![
        (&config.hub.amqp, vec!["hub".into(), "amqp".into()]),
        (&config.hub.archive, vec!["hub".into(), "archive".into()]),
    ];
    for (i, s) in config.sources.iter().enumerate() {
        urls.push((&s.url, vec!["source".into(), i.into(), "url".into()]));
        urls.extend(
            s.amqp
                .iter()
                .map(|a| (a, vec!["source".into(), i.into(), "amqp".into()])),
        );
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        urls.extend(
            sub.url
                .iter()
                .map(|u| (u, vec!["subscriber".into(), i.into(), "url".into()])),
        );
        urls.extend(
            sub.amqp
                .iter()
                .map(|a| (a, vec!["subscriber".into(), i.into(), "amqp".into()])),
        );
    }
    for (url, at) in urls {
        if let Some(crate::secret::PasswordFrom::File(p)) = url.password_from() {
            let path = base.join(p);
            if path.exists()
                && let Err(e) = crate::secret::read_password_file(&path)
            {
                c.error(&at, format!("{url}"), e.to_string());
            }
        }
    }
}

/// Public keys parse and carry their owner's name (`org#…`, `hub#…`); an org that requires
/// signatures has a key to check them with.
fn check_keys(c: &mut Checker<'_>, config: &Config, base: &std::path::Path) {
    let keys = |c: &mut Checker<'_>, lines: &[String], owner: &str, at: Vec<Seg>, label: String| {
        for (j, line) in lines.iter().enumerate() {
            let here = [at.clone(), vec!["public_keys".into(), j.into()]].concat();
            match exhub_connect::sign::VerifyingKey::from_line(line) {
                Err(e) => c.error(&here, format!("{label} → public_keys[{j}]"), e.to_string()),
                Ok(k) if k.org() != owner => c.error(
                    &here,
                    format!("{label} → public_keys[{j}]"),
                    format!("key id {:?} must start with \"{owner}#\"", k.key_id()),
                ),
                Ok(_) => {}
            }
        }
    };
    // A key file's lines, or a warning that it is not there yet.
    let file_keys =
        |c: &mut Checker<'_>, file: &Option<std::path::PathBuf>, at: Vec<Seg>, label: &str| -> Vec<String> {
            let Some(f) = file else { return Vec::new() };
            match crate::config::read_key_lines(&base.join(f)) {
                Ok(lines) => lines,
                Err(_) => {
                    c.warn(
                        &[at, vec!["public_keys_file".into()]].concat(),
                        label.to_owned(),
                        format!(
                            "public key file {} does not exist yet (exhub keys generate writes it)",
                            f.display()
                        ),
                    );
                    Vec::new()
                }
            }
        };
    let mut hub_keys = config.hub.public_keys.clone();
    hub_keys.extend(file_keys(c, &config.hub.public_keys_file, vec!["hub".into()], "hub"));
    keys(c, &hub_keys, "hub", vec!["hub".into()], "hub".into());
    for (i, org) in config.orgs.iter().enumerate() {
        let label = format!("org {:?}", org.id);
        let mut lines = org.public_keys.clone();
        lines.extend(file_keys(
            c,
            &org.public_keys_file,
            vec!["org".into(), i.into()],
            &label,
        ));
        keys(c, &lines, &org.id, vec!["org".into(), i.into()], label.clone());
        if org.require_signature && org.public_keys.is_empty() && org.public_keys_file.is_none() {
            c.error(
                &["org".into(), i.into(), "require_signature".into()],
                label,
                "require_signature needs public_keys (or public_keys_file) to check signatures with (exhub keys generate prints one)".into(),
            );
        }
    }
}

/// A mask on a field that is a document's business key hides it in the body only: the header's
/// `key` still carries it (sinks need it). Said as a warning, so that nobody relies on it.
fn check_masked_keys(c: &mut Checker<'_>, config: &Config) {
    for (i, route) in config.routes.iter().enumerate() {
        let key_fields: BTreeSet<&str> = config
            .sources
            .iter()
            .flat_map(|s| s.tables.iter())
            .filter(|t| route.doc_types.contains(&t.doc_type))
            .flat_map(|t| {
                t.fields
                    .iter()
                    .filter(|(_, column)| t.key.contains(column))
                    .map(|(field, _)| field.as_str())
            })
            .collect();
        for (sub, fields) in &route.mask {
            for field in fields.iter().filter(|f| key_fields.contains(f.as_str())) {
                c.warn(
                    &["route".into(), i.into(), "mask".into(), sub.as_str().into()],
                    format!("route {:?} → mask.{sub}", route.name),
                    format!("{field:?} is a business key: masked in the body, it still travels in the header's key"),
                );
            }
        }
    }
}
