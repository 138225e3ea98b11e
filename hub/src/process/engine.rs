//! The approval engine's state machine, pure: an [`Instance`] per request (its id the request's
//! conversation id), started at the first stage; decisions recorded per approver; a stage
//! passes once its join rule has its approvals, and fails once it can no longer have them; a
//! return for correction waits for the applicant's resubmission at the same stage; the last
//! stage's passing approves the instance. What is to be sent comes out as [`Effect`]s; what
//! must be refused as a [`Refusal`] with its reason, the instance unchanged. The same decision
//! twice changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Calendar, Process};

/// What an approver decided (`approval.decision`'s `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 同意.
    Approved,
    /// 不同意: the stage fails unless its join can still pass without this approver.
    Rejected,
    /// 退回 / 补正: back to the applicant for correction.
    Returned,
}

impl Verdict {
    /// The verdict of `approval.decision`'s `decision` (`need_more_info` is a return).
    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "approved" => Some(Verdict::Approved),
            "rejected" => Some(Verdict::Rejected),
            "returned" | "need_more_info" => Some(Verdict::Returned),
            _ => None,
        }
    }
}

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// At its current stage, waiting for decisions.
    Open,
    /// Returned to the applicant; a resubmission continues at the same stage.
    Returned,
    /// Every stage passed.
    Approved,
    /// A stage failed.
    Rejected,
}

/// One decision as the engine takes it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The deciding org (the verified sender).
    pub from: String,
    /// The stage it names.
    pub stage: String,
    /// What it decided.
    pub verdict: Verdict,
    /// Its document's id.
    pub document: String,
}

/// A decision recorded in an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// What.
    pub verdict: Verdict,
    /// Its document.
    pub document: String,
    /// When, Unix µs.
    pub at: i64,
}

/// Something that happened to an instance, for its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, Unix µs.
    pub at: i64,
    /// `started`, `sent`, `decided`, `stage_passed`, `returned`, `resubmitted`, `approved`, `rejected`.
    pub what: String,
    /// The stage.
    pub stage: String,
    /// The org concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The document concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

/// One running (or finished) approval: kept as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id: the request's conversation id.
    pub id: String,
    /// The process.
    pub process: String,
    /// The request document being decided (the latest resubmission).
    pub request: String,
    /// The applicant's org.
    pub applicant: String,
    /// Where it stands.
    pub state: State,
    /// The current stage (index).
    pub stage: usize,
    /// When the current stage started, Unix µs.
    pub stage_started: i64,
    /// The current stage's decisions, per approver org.
    pub decisions: BTreeMap<String, Decided>,
    /// Everything that happened.
    pub timeline: Vec<Event>,
}

/// What the hub is to do for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send the request to an approver's inbox for a stage.
    SendRequest {
        /// The stage.
        stage: String,
        /// The approver org.
        approver: String,
        /// Its subscriber.
        inbox: String,
    },
    /// The outcome (`approved`, `rejected`, `returned`) to the applicant and every approver.
    Outcome {
        /// Where it stands now.
        state: State,
        /// The subscribers to tell.
        to: Vec<String>,
    },
}

/// Why a decision (or a resubmission) is refused; the instance stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The decision's org does not decide the current stage.
    #[error("org {org:?} is not an approver of stage {stage:?}")]
    NotApprover {
        /// The org.
        org: String,
        /// The current stage.
        stage: String,
    },
    /// The instance is approved or rejected.
    #[error("the approval is already {0:?}")]
    Finished(State),
    /// The instance waits for the applicant's correction.
    #[error("the approval was returned to the applicant for correction")]
    Returned,
    /// The decision names a stage already passed, or one not reached yet.
    #[error("stage {named:?} is not the current stage {current:?}")]
    WrongStage {
        /// The stage named.
        named: String,
        /// The current stage.
        current: String,
    },
    /// The org already decided this stage otherwise.
    #[error("org {org:?} already decided {earlier:?} at this stage")]
    Conflict {
        /// The org.
        org: String,
        /// What it decided before.
        earlier: Verdict,
    },
    /// A resubmission for an instance that was not returned.
    #[error("only a returned approval may be resubmitted")]
    NotReturned,
}

impl Refusal {
    /// The DLQ reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotApprover { .. } => "not_approver",
            Refusal::Finished(_) | Refusal::Returned | Refusal::NotReturned => "process_state",
            Refusal::WrongStage { .. } => "wrong_stage",
            Refusal::Conflict { .. } => "conflict",
        }
    }
}

/// A pending approver and its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The stage.
    pub stage: String,
    /// The approver org.
    pub approver: String,
    /// When it is due, Unix µs.
    pub due: i64,
    /// `clear`, `yellow` (75% of its time gone) or `red` (overdue).
    pub level: &'static str,
}

impl Instance {
    /// A new instance of `p` for request `request` of `applicant`, at its first stage.
    pub fn start(p: &Process, id: &str, request: &str, applicant: &str, now: i64) -> (Instance, Vec<Effect>) {
        let mut i = Instance {
            id: id.to_owned(),
            process: p.name.clone(),
            request: request.to_owned(),
            applicant: applicant.to_owned(),
            state: State::Open,
            stage: 0,
            stage_started: now,
            decisions: BTreeMap::new(),
            timeline: Vec::new(),
        };
        let first = p.stages.first().map_or(String::new(), |s| s.name.clone());
        i.event(now, "started", &first, Some(applicant), Some(request));
        let effects = i.enter_stage(p, 0, now);
        (i, effects)
    }

    fn event(&mut self, at: i64, what: &str, stage: &str, org: Option<&str>, document: Option<&str>) {
        self.timeline.push(Event {
            at,
            what: what.to_owned(),
            stage: stage.to_owned(),
            org: org.map(str::to_owned),
            document: document.map(str::to_owned),
        });
    }

    /// Enters stage `n` (or approves the instance past the last): the request goes to each of
    /// its approvers.
    fn enter_stage(&mut self, p: &Process, n: usize, now: i64) -> Vec<Effect> {
        self.decisions.clear();
        self.stage = n;
        self.stage_started = now;
        let Some(stage) = p.stages.get(n) else {
            return self.finish(p, State::Approved, now);
        };
        let mut effects = Vec::new();
        for a in &stage.approvers {
            let Some(inbox) = p.inboxes.get(a) else { continue };
            self.event(now, "sent", &stage.name, Some(a), Some(&self.request.clone()));
            effects.push(Effect::SendRequest {
                stage: stage.name.clone(),
                approver: a.clone(),
                inbox: inbox.clone(),
            });
        }
        effects
    }

    /// Ends at `state` (approved, rejected) or waits for the applicant (returned).
    fn finish(&mut self, p: &Process, state: State, now: i64) -> Vec<Effect> {
        self.state = state;
        let what = match state {
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Returned => "returned",
            State::Open => "open",
        };
        let stage = self.stage_name(p);
        self.event(now, what, &stage, None, None);
        let mut to: Vec<String> = p.reply_to.iter().cloned().collect();
        for inbox in p
            .stages
            .iter()
            .flat_map(|s| &s.approvers)
            .filter_map(|a| p.inboxes.get(a))
        {
            if !to.contains(inbox) {
                to.push(inbox.clone());
            }
        }
        vec![Effect::Outcome { state, to }]
    }

    fn stage_name(&self, p: &Process) -> String {
        p.stages.get(self.stage).map_or(String::new(), |s| s.name.clone())
    }

    /// Takes decision `d` at `now`.
    pub fn decide(&mut self, p: &Process, d: &Decision, now: i64) -> Result<Vec<Effect>, Refusal> {
        match self.state {
            State::Open => {}
            State::Returned => return Err(Refusal::Returned),
            s => return Err(Refusal::Finished(s)),
        }
        let current = self.stage_name(p);
        if d.stage != current {
            return Err(Refusal::WrongStage {
                named: d.stage.clone(),
                current,
            });
        }
        let Some(stage) = p.stages.get(self.stage) else {
            return Err(Refusal::Finished(self.state));
        };
        if !stage.approvers.contains(&d.from) {
            return Err(Refusal::NotApprover {
                org: d.from.clone(),
                stage: current,
            });
        }
        if let Some(earlier) = self.decisions.get(&d.from) {
            return if earlier.verdict == d.verdict {
                Ok(Vec::new())
            } else {
                Err(Refusal::Conflict {
                    org: d.from.clone(),
                    earlier: earlier.verdict,
                })
            };
        }
        self.decisions.insert(
            d.from.clone(),
            Decided {
                verdict: d.verdict,
                document: d.document.clone(),
                at: now,
            },
        );
        self.event(now, "decided", &current, Some(&d.from), Some(&d.document));
        if d.verdict == Verdict::Returned {
            return Ok(self.finish(p, State::Returned, now));
        }
        let approved = self
            .decisions
            .values()
            .filter(|x| x.verdict == Verdict::Approved)
            .count();
        let undecided = stage.approvers.len() - self.decisions.len();
        let needed = stage.join.needed(stage.approvers.len());
        if approved >= needed {
            self.event(now, "stage_passed", &current, None, None);
            return Ok(self.enter_stage(p, self.stage + 1, now));
        }
        if approved + undecided < needed {
            return Ok(self.finish(p, State::Rejected, now));
        }
        Ok(Vec::new())
    }

    /// The applicant's corrected request `request` for a returned instance: the current stage
    /// starts over with it.
    pub fn resubmit(&mut self, p: &Process, request: &str, now: i64) -> Result<Vec<Effect>, Refusal> {
        if self.state != State::Returned {
            return Err(Refusal::NotReturned);
        }
        self.state = State::Open;
        self.request = request.to_owned();
        let stage = self.stage_name(p);
        let applicant = self.applicant.clone();
        self.event(now, "resubmitted", &stage, Some(&applicant), Some(request));
        Ok(self.enter_stage(p, self.stage, now))
    }

    /// The current stage's approvers who have not decided, with their deadlines at `now`.
    pub fn pending(&self, p: &Process, calendar: &Calendar, now: i64) -> Vec<Pending> {
        if self.state != State::Open {
            return Vec::new();
        }
        let Some(stage) = p.stages.get(self.stage) else {
            return Vec::new();
        };
        let due = calendar.due(self.stage_started, stage.deadline);
        let span = (due - self.stage_started).max(1);
        let level = if now >= due {
            "red"
        } else if (now - self.stage_started) * 4 >= span * 3 {
            "yellow"
        } else {
            "clear"
        };
        stage
            .approvers
            .iter()
            .filter(|a| !self.decisions.contains_key(*a))
            .map(|a| Pending {
                stage: stage.name.clone(),
                approver: a.clone(),
                due,
                level,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Deadline, Join, Stage};
    use super::*;

    const SEC: i64 = 1_000_000;

    /// acceptance (science) → review (ip ∥ info, `join`) → decision (science).
    fn rd_centre(join: Join) -> Process {
        let stage = |name: &str, approvers: &[&str], join| Stage {
            name: name.into(),
            approvers: approvers.iter().map(|a| (*a).to_owned()).collect(),
            join,
            deadline: Deadline::Elapsed(100 * SEC),
        };
        Process {
            name: "rd_centre".into(),
            start: "approval.request".into(),
            reply_to: Some("portal".into()),
            inboxes: [
                ("science", "science-in"),
                ("ip", "ip-in"),
                ("info", "info-in"),
                ("tax", "tax-in"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            stages: vec![
                stage("acceptance", &["science"], Join::All),
                stage("review", &["ip", "info", "tax"], join),
                stage("decision", &["science"], Join::All),
            ],
        }
    }

    fn d(from: &str, stage: &str, verdict: Verdict) -> Decision {
        Decision {
            from: from.into(),
            stage: stage.into(),
            verdict,
            document: format!("{from}-{stage}-{verdict:?}"),
        }
    }

    /// The state the first effect announces, if it is an outcome.
    fn outcome(effects: &[Effect]) -> Option<State> {
        match effects.first()? {
            Effect::Outcome { state, .. } => Some(*state),
            Effect::SendRequest { .. } => None,
        }
    }

    fn sent_to(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::SendRequest { approver, .. } => Some(approver.clone()),
                Effect::Outcome { .. } => None,
            })
            .collect()
    }

    #[test]
    fn serial_then_parallel_to_approval() {
        let p = rd_centre(Join::All);
        let (mut i, effects) = Instance::start(&p, "c1", "r1", "applicant", 0);
        assert_eq!(sent_to(&effects), ["science"]);
        let e = i
            .decide(&p, &d("science", "acceptance", Verdict::Approved), SEC)
            .unwrap();
        assert_eq!(sent_to(&e), ["ip", "info", "tax"]);
        assert!(
            i.decide(&p, &d("ip", "review", Verdict::Approved), 2 * SEC)
                .unwrap()
                .is_empty()
        );
        assert!(
            i.decide(&p, &d("info", "review", Verdict::Approved), 2 * SEC)
                .unwrap()
                .is_empty()
        );
        let e = i.decide(&p, &d("tax", "review", Verdict::Approved), 3 * SEC).unwrap();
        assert_eq!(sent_to(&e), ["science"]);
        let e = i
            .decide(&p, &d("science", "decision", Verdict::Approved), 4 * SEC)
            .unwrap();
        assert_eq!(
            e,
            [Effect::Outcome {
                state: State::Approved,
                to: vec![
                    "portal".into(),
                    "science-in".into(),
                    "ip-in".into(),
                    "info-in".into(),
                    "tax-in".into()
                ],
            }]
        );
        assert_eq!(i.state, State::Approved);
        assert_eq!(
            i.decide(&p, &d("science", "decision", Verdict::Approved), 5 * SEC),
            Err(Refusal::Finished(State::Approved))
        );
        let whats: Vec<&str> = i.timeline.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats.first(), Some(&"started"));
        assert_eq!(whats.last(), Some(&"approved"));
    }

    #[test]
    fn a_rejection_in_the_parallel_stage_ends_it_unless_the_join_can_still_pass() {
        let p = rd_centre(Join::All);
        let (mut i, _) = Instance::start(&p, "c1", "r1", "applicant", 0);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        let e = i.decide(&p, &d("info", "review", Verdict::Rejected), 0).unwrap();
        assert_eq!(outcome(&e), Some(State::Rejected), "{e:?}");

        // Any: one rejection leaves two who may still approve; one approval passes.
        let p = rd_centre(Join::Any);
        let (mut i, _) = Instance::start(&p, "c2", "r2", "applicant", 0);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        assert!(
            i.decide(&p, &d("info", "review", Verdict::Rejected), 0)
                .unwrap()
                .is_empty()
        );
        let e = i.decide(&p, &d("ip", "review", Verdict::Approved), 0).unwrap();
        assert_eq!(sent_to(&e), ["science"]);

        // A quorum of 2 of 3: two rejections leave it unreachable.
        let p = rd_centre(Join::Quorum(2));
        let (mut i, _) = Instance::start(&p, "c3", "r3", "applicant", 0);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        i.decide(&p, &d("ip", "review", Verdict::Approved), 0).unwrap();
        assert!(
            i.decide(&p, &d("info", "review", Verdict::Rejected), 0)
                .unwrap()
                .is_empty()
        );
        let e = i.decide(&p, &d("tax", "review", Verdict::Rejected), 0).unwrap();
        assert_eq!(outcome(&e), Some(State::Rejected), "{e:?}");
    }

    #[test]
    fn refusals_leave_the_instance_as_it_was_and_a_repeat_is_harmless() {
        let p = rd_centre(Join::All);
        let (mut i, _) = Instance::start(&p, "c1", "r1", "applicant", 0);
        let before = i.clone();
        assert!(matches!(
            i.decide(&p, &d("ip", "acceptance", Verdict::Approved), 0),
            Err(Refusal::NotApprover { .. })
        ));
        assert!(matches!(
            i.decide(&p, &d("science", "review", Verdict::Approved), 0),
            Err(Refusal::WrongStage { .. })
        ));
        assert_eq!(i, before);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        i.decide(&p, &d("ip", "review", Verdict::Approved), 0).unwrap();
        let once = i.clone();
        assert_eq!(i.decide(&p, &d("ip", "review", Verdict::Approved), SEC), Ok(Vec::new()));
        assert_eq!(i, once, "the same decision twice changes nothing");
        let e = i.decide(&p, &d("ip", "review", Verdict::Rejected), SEC).unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert!(matches!(
            i.decide(&p, &d("science", "acceptance", Verdict::Approved), SEC),
            Err(Refusal::WrongStage { .. })
        ));
        assert_eq!(i, once);
    }

    #[test]
    fn a_return_waits_for_the_resubmission_which_restarts_the_stage() {
        let p = rd_centre(Join::All);
        let (mut i, _) = Instance::start(&p, "c1", "r1", "applicant", 0);
        let e = i
            .decide(&p, &d("science", "acceptance", Verdict::Returned), SEC)
            .unwrap();
        assert_eq!(outcome(&e), Some(State::Returned), "{e:?}");
        assert_eq!(
            i.decide(&p, &d("science", "acceptance", Verdict::Approved), SEC),
            Err(Refusal::Returned)
        );
        let e = i.resubmit(&p, "r1-corrected", 10 * SEC).unwrap();
        assert_eq!(sent_to(&e), ["science"]);
        assert_eq!(
            (i.state, i.request.as_str(), i.stage_started),
            (State::Open, "r1-corrected", 10 * SEC)
        );
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 11 * SEC)
            .unwrap();
        assert_eq!(i.resubmit(&p, "again", 12 * SEC), Err(Refusal::NotReturned));
    }

    #[test]
    fn pending_approvers_go_yellow_at_three_quarters_and_red_when_overdue() {
        let p = rd_centre(Join::All);
        let cal = Calendar::default();
        let (mut i, _) = Instance::start(&p, "c1", "r1", "applicant", 0);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        i.decide(&p, &d("ip", "review", Verdict::Approved), 0).unwrap();
        let level = |now| {
            let pending = i.pending(&p, &cal, now);
            assert_eq!(pending.len(), 2, "info and tax");
            pending[0].level
        };
        assert_eq!(level(74 * SEC), "clear");
        assert_eq!(level(75 * SEC), "yellow");
        assert_eq!(level(100 * SEC), "red");
        assert_eq!(i.pending(&p, &cal, 0)[0].due, 100 * SEC);
    }

    #[test]
    fn an_instance_reads_back_as_it_was_written() {
        let p = rd_centre(Join::Quorum(2));
        let (mut i, _) = Instance::start(&p, "c1", "r1", "applicant", 0);
        i.decide(&p, &d("science", "acceptance", Verdict::Approved), 0).unwrap();
        let text = serde_json::to_string(&i).unwrap();
        let back: Instance = serde_json::from_str(&text).unwrap();
        assert_eq!(back, i);
        assert_eq!(Verdict::parse("need_more_info"), Some(Verdict::Returned));
        assert_eq!(Verdict::parse("maybe"), None);
    }
}
