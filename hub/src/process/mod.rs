//! Cross-department approval flows (串联 and 并联审批) as process routes: `[[process]]` in
//! routes.toml ([`ProcessConfig`]), compiled into a [`Process`] that `exhub check` has checked,
//! and the engine's state machine ([`engine`]) — an instance per request, its stages in series,
//! each stage's approvers in parallel with a join rule, deadlines in working time
//! ([`calendar`]). What the engine decides is pure: the hub (next) keeps instances in the
//! archive and sends what they say.

pub mod calendar;
pub mod engine;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use calendar::{Calendar, CalendarConfig, Deadline};

use crate::config::Config;

/// The doc type that starts a process unless its `start` says otherwise.
pub const REQUEST_DOC_TYPE: &str = "approval.request";
/// The doc type of approvers' answers.
pub const DECISION_DOC_TYPE: &str = "approval.decision";

/// `[[process]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The process's name: a request whose `body.flow` is this name starts an instance.
    pub name: String,
    /// The doc type that starts it (default `approval.request`).
    pub start: Option<String>,
    /// The subscriber the outcome goes to, for the applicant.
    pub applicant_reply_to: Option<String>,
    /// Where an approver org receives requests, when it has several subscribers.
    #[serde(default)]
    pub inboxes: BTreeMap<String, String>,
    /// The stages, in series.
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageConfig>,
}

/// `[[process.stage]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage's name (decisions name it).
    pub name: String,
    /// The orgs that decide it, in parallel.
    pub approvers: Vec<String>,
    /// `all` (default), `any`, or a number of approvals (a quorum).
    pub join: Option<String>,
    /// How long it may take: `5d` working days, `4h` working hours, `10m`/`30s` plain time.
    pub deadline: String,
}

/// How many of a stage's approvers must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Every one.
    All,
    /// One.
    Any,
    /// This many.
    Quorum(usize),
}

impl Join {
    /// Approvals needed of `approvers`.
    pub fn needed(self, approvers: usize) -> usize {
        match self {
            Join::All => approvers,
            Join::Any => 1.min(approvers),
            Join::Quorum(n) => n.min(approvers),
        }
    }
}

impl std::str::FromStr for Join {
    type Err = String;

    fn from_str(text: &str) -> Result<Join, String> {
        match text {
            "all" => Ok(Join::All),
            "any" => Ok(Join::Any),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Join::Quorum(n)),
                _ => Err(format!("{text:?} is not a join: all, any or a number of approvals")),
            },
        }
    }
}

/// A stage, compiled.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its name.
    pub name: String,
    /// Its approver orgs.
    pub approvers: Vec<String>,
    /// Its join rule.
    pub join: Join,
    /// Its deadline.
    pub deadline: Deadline,
}

/// A process, compiled.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its name.
    pub name: String,
    /// The doc type that starts it.
    pub start: String,
    /// The applicant's subscriber for the outcome.
    pub reply_to: Option<String>,
    /// Approver org → the subscriber it receives requests at.
    pub inboxes: BTreeMap<String, String>,
    /// Its stages, in series.
    pub stages: Vec<Stage>,
}

impl Process {
    /// Compiles `p` for `config`; every problem, each with the field it is about (`exhub check`
    /// reports them; the hub starts only with none).
    pub fn compile(p: &ProcessConfig, config: &Config) -> Result<Process, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut stages = Vec::new();
        let mut inboxes = BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        if p.stages.is_empty() {
            problems.push(("stage".to_owned(), "a process needs at least one stage".to_owned()));
        }
        for (i, s) in p.stages.iter().enumerate() {
            let at = |field: &str| format!("stage[{i}].{field}");
            if !names.insert(s.name.as_str()) {
                problems.push((at("name"), format!("stage {:?} twice", s.name)));
            }
            let join = match s.join.as_deref().unwrap_or("all").parse::<Join>() {
                Ok(j) => j,
                Err(e) => {
                    problems.push((at("join"), e));
                    Join::All
                }
            };
            if let Join::Quorum(n) = join
                && n > s.approvers.len()
            {
                problems.push((at("join"), format!("{n} approvals of {} approvers", s.approvers.len())));
            }
            if s.approvers.is_empty() {
                problems.push((at("approvers"), "no approvers".to_owned()));
            }
            for a in &s.approvers {
                let Some(org) = config.org(a) else {
                    problems.push((at("approvers"), format!("org {a:?} is not defined")));
                    continue;
                };
                if !org.publishes.iter().any(|d| d == DECISION_DOC_TYPE) {
                    problems.push((
                        at("approvers"),
                        format!("org {a:?} may not publish {DECISION_DOC_TYPE} (add it to its publishes)"),
                    ));
                }
                let own: Vec<&str> = config
                    .subscribers
                    .iter()
                    .filter(|sub| sub.org() == a.as_str())
                    .map(|sub| sub.name())
                    .collect();
                match (p.inboxes.get(a), own.as_slice()) {
                    (Some(inbox), _) if own.contains(&inbox.as_str()) => {
                        inboxes.insert(a.clone(), inbox.clone());
                    }
                    (Some(inbox), _) => problems.push((
                        format!("inboxes.{a}"),
                        format!("{inbox:?} is not a subscriber of org {a:?}"),
                    )),
                    (None, [only]) => {
                        inboxes.insert(a.clone(), (*only).to_owned());
                    }
                    (None, []) => problems.push((
                        at("approvers"),
                        format!("org {a:?} has no subscriber to receive requests at"),
                    )),
                    (None, _) => problems.push((
                        format!("inboxes.{a}"),
                        format!("org {a:?} has several subscribers: say which receives requests"),
                    )),
                }
            }
            let deadline = match s.deadline.parse::<Deadline>() {
                Ok(d) => d,
                Err(e) => {
                    problems.push((at("deadline"), e));
                    Deadline::Elapsed(0)
                }
            };
            stages.push(Stage {
                name: s.name.clone(),
                approvers: s.approvers.clone(),
                join,
                deadline,
            });
        }
        if let Some(r) = &p.applicant_reply_to
            && !config.subscribers.iter().any(|s| s.name() == r.as_str())
        {
            problems.push((
                "applicant_reply_to".to_owned(),
                format!("subscriber {r:?} is not defined"),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Process {
            name: p.name.clone(),
            start: p.start.clone().unwrap_or_else(|| REQUEST_DOC_TYPE.to_owned()),
            reply_to: p.applicant_reply_to.clone(),
            inboxes,
            stages,
        })
    }
}
