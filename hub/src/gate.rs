//! The hub's gate: everything a document must pass before it is archived — decode (within the
//! size and depth limits), authenticate (the AMQP user RabbitMQ verified must belong to the org
//! named in `header.sender`), authorize (that org may publish that doc type), validate against
//! the schema, and check `content_hash` when the sender gave one. A refusal carries a short
//! machine-readable reason (the DLQ's `x-exhub-reason`) and a human detail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use exhub_schemas::{Document, Encoding, Limits, Registry, canonical, decode};

use crate::config::Config;

pub use exhub_connect::wire::Reason;
use exhub_connect::wire::{self, excerpt};

/// A document the gate let through.
#[derive(Debug)]
pub struct Admitted {
    /// The decoded document.
    pub doc: Document,
    /// The encoding it arrived in.
    pub encoding: Encoding,
    /// `sha256:<hex>` of its canonical form.
    pub hash: String,
}

/// A document the gate refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// Human text: what exactly is wrong.
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`; the detail is cut to [`wire::HEADER_MAX`] bytes (it travels
    /// in a header, and input must never make it grow without bound).
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        let detail = match wire::excerpt(&detail, wire::HEADER_MAX) {
            std::borrow::Cow::Borrowed(_) => detail,
            std::borrow::Cow::Owned(cut) => cut,
        };
        Rejection { reason, detail }
    }
}

struct Org {
    user: String,
    publishes: HashSet<String>,
}

/// The checks, compiled from the config.
pub struct Gate {
    registry: Arc<Registry>,
    orgs: HashMap<String, Org>,
    limits: Limits,
}

impl Gate {
    /// The gate for `config`, validating with `registry`.
    pub fn new(config: &Config, registry: Arc<Registry>) -> Gate {
        let mut orgs = config
            .orgs
            .iter()
            .map(|o| {
                let org = Org {
                    user: o.amqp_user().to_owned(),
                    publishes: o.publishes.iter().cloned().collect(),
                };
                (o.id.clone(), org)
            })
            .collect::<HashMap<_, _>>();
        // The hub's own documents (its alerts), from the hub's user only.
        orgs.insert(
            crate::alerts::HUB_ORG.to_owned(),
            Org {
                user: config.hub.user(),
                publishes: HashSet::from([crate::alerts::ALERT_DOC_TYPE.to_owned()]),
            },
        );
        Gate {
            registry,
            orgs,
            limits: config.hub.limits(),
        }
    }

    /// The schema registry the gate validates with.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs every check on one document published by AMQP user `user`.
    pub fn admit(&self, raw: &[u8], user: Option<&str>) -> Result<Admitted, Rejection> {
        let doc = decode(raw, &self.registry, &self.limits).map_err(|e| {
            // The decoder's reasons are a subset of the exchange's.
            let reason = Reason::from_code(e.reason()).unwrap_or(Reason::Malformed);
            Rejection::new(reason, e.to_string())
        })?;
        let h = &doc.header;
        let Some(org) = self.orgs.get(&h.sender.org) else {
            return Err(Rejection::new(
                Reason::Unauthenticated,
                format!(
                    "sender org {:?} is not a member of this exchange",
                    excerpt(&h.sender.org, 64)
                ),
            ));
        };
        match user {
            Some(u) if u == org.user => {}
            Some(u) => {
                return Err(Rejection::new(
                    Reason::Unauthenticated,
                    format!(
                        "AMQP user {:?} may not publish as org {:?} (its user is {:?})",
                        excerpt(u, 64),
                        h.sender.org,
                        org.user
                    ),
                ));
            }
            None => {
                return Err(Rejection::new(
                    Reason::Unauthenticated,
                    "the message has no user_id property; publishers must set it to their AMQP user",
                ));
            }
        }
        // Only the hub speaks as the hub: its alerts come from no one else, whatever an
        // `[[org]]`'s `publishes` says (`exhub check` refuses that too).
        let hub_only = (h.doc_type == crate::alerts::ALERT_DOC_TYPE) != (h.sender.org == crate::alerts::HUB_ORG);
        if hub_only || !org.publishes.contains(&h.doc_type) {
            return Err(Rejection::new(
                Reason::Unauthorized,
                format!("org {:?} may not publish {:?}", h.sender.org, excerpt(&h.doc_type, 64)),
            ));
        }
        let violations = self.registry.validate(&doc);
        if !violations.is_empty() {
            let detail: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(Rejection::new(Reason::Schema, detail.join("; ")));
        }
        let hash = canonical::content_hash(&doc);
        if let Some(claimed) = &h.content_hash
            && *claimed != hash
        {
            return Err(Rejection::new(
                Reason::Integrity,
                format!("content_hash says {claimed} but the content hashes to {hash}"),
            ));
        }
        let encoding = Encoding::detect(raw).unwrap_or(Encoding::Json);
        Ok(Admitted { doc, encoding, hash })
    }
}
