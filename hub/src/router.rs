//! The router: which subscribers get a document, and what each may see. Compiled once from the
//! `[[route]]` tables of routes.toml: a route matches by doc type, sender org (`from`) and an
//! optional `where` filter on body fields; its `mask` hides body fields from named subscribers;
//! each subscriber's `format` says JSON or XML.
//!
//! When several routes bring the same document to one subscriber, the subscriber sees a field
//! unless *every* one of those routes masks it: each route is a grant, and a grant without a
//! mask is a grant of the whole document.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use exhub_schemas::{Document, Encoding};

use crate::config::Config;
use crate::filter::{Filter, FilterError};

/// One copy of a document for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Subscriber name.
    pub subscriber: String,
    /// Encoding it reads.
    pub format: Encoding,
    /// Body fields removed from its copy.
    pub mask: BTreeSet<String>,
    /// Whether its copies may travel as batches (else one document per message).
    pub batch: bool,
    /// The routes that sent it there, in routes.toml's order.
    pub routes: Vec<Arc<str>>,
}

struct Rule {
    name: Arc<str>,
    from: Option<Vec<String>>,
    filter: Option<Filter>,
    to: Vec<(String, BTreeSet<String>)>,
}

/// A route table that cannot be compiled (the config check reports these first).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A `where` that does not parse.
    #[error("route {route:?}: where: {error}")]
    Filter {
        /// Route name.
        route: String,
        /// The parse error.
        error: FilterError,
    },
    /// A route names a subscriber that is not defined.
    #[error("route {route:?}: subscriber {subscriber:?} is not defined")]
    Subscriber {
        /// Route name.
        route: String,
        /// The unknown subscriber.
        subscriber: String,
    },
}

/// Compiled routes.
pub struct Router {
    by_type: HashMap<String, Vec<Rule>>,
    /// Per subscriber: the encoding it reads, whether it takes batches.
    formats: HashMap<String, (Encoding, bool)>,
}

impl Router {
    /// Compiles the routes of `config`.
    pub fn new(config: &Config) -> Result<Router, RouterError> {
        let formats: HashMap<String, (Encoding, bool)> = config
            .subscribers
            .iter()
            .map(|s| (s.name().to_owned(), (s.format().into(), s.takes_batches())))
            .collect();
        let mut by_type: HashMap<String, Vec<Rule>> = HashMap::new();
        for r in &config.routes {
            let filter = r
                .filter
                .as_deref()
                .map(Filter::parse)
                .transpose()
                .map_err(|error| RouterError::Filter {
                    route: r.name.clone(),
                    error,
                })?;
            let mut to = Vec::new();
            for s in &r.to {
                if !formats.contains_key(s) {
                    return Err(RouterError::Subscriber {
                        route: r.name.clone(),
                        subscriber: s.clone(),
                    });
                }
                let mask = r.mask.get(s).map(|m| m.iter().cloned().collect()).unwrap_or_default();
                to.push((s.clone(), mask));
            }
            for t in &r.doc_types {
                by_type.entry(t.clone()).or_default().push(Rule {
                    name: Arc::from(r.name.as_str()),
                    from: r.from.clone(),
                    filter: filter.clone(),
                    to: to.clone(),
                });
            }
        }
        Ok(Router { by_type, formats })
    }

    /// Every subscriber's name (each has a queue, whether or not a route feeds it).
    pub fn subscribers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.formats.keys().cloned().collect();
        names.sort();
        names
    }

    /// The copies to make of `doc`, in subscriber-name order.
    pub fn route(&self, doc: &Document) -> Vec<Target> {
        let mut masks: HashMap<&str, (BTreeSet<String>, Vec<Arc<str>>)> = HashMap::new();
        for rule in self.by_type.get(&doc.header.doc_type).into_iter().flatten() {
            if rule.from.as_ref().is_some_and(|f| !f.contains(&doc.header.sender.org)) {
                continue;
            }
            if rule.filter.as_ref().is_some_and(|f| !f.matches(&doc.body)) {
                continue;
            }
            for (s, mask) in &rule.to {
                let (m, routes) = masks.entry(s).or_insert_with(|| (mask.clone(), Vec::new()));
                m.retain(|f| mask.contains(f));
                routes.push(Arc::clone(&rule.name));
            }
        }
        let mut targets: Vec<Target> = masks
            .into_iter()
            .map(|(s, (mask, routes))| {
                let (format, batch) = self.formats.get(s).copied().unwrap_or((Encoding::Json, false));
                Target {
                    subscriber: s.to_owned(),
                    format,
                    mask,
                    batch,
                    routes,
                }
            })
            .collect();
        targets.sort_by(|a, b| a.subscriber.cmp(&b.subscriber));
        targets
    }

    /// The copy of `doc` for `subscriber`, if any route brings it there.
    pub fn target(&self, doc: &Document, subscriber: &str) -> Option<Target> {
        self.route(doc).into_iter().find(|t| t.subscriber == subscriber)
    }
}
