//! Statistics (统计) from the archive: per department, doc type, subscriber or local day, what was
//! sent, refused, routed and applied, and how long applying took. The archive gives the facts
//! ([`crate::archive::Archive::stats_facts`]); [`aggregate`] counts them, a pure function that
//! `exhub stats` (and later the console) prints.

use std::collections::{BTreeMap, HashMap};

use exhub_schemas::Timestamp;
use serde::Serialize;

/// One archived document, as the statistics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFact {
    /// The sender org.
    pub org: String,
    /// The doc type.
    pub doc_type: String,
    /// When the hub received it (µs since the epoch).
    pub received_at: i64,
    /// The subscribers it was routed to.
    pub subscribers: Vec<String>,
    /// Its receipts: (subscriber, `applied` or `refused`, when the hub recorded it, µs).
    pub receipts: Vec<(String, String, i64)>,
}

/// A message the hub refused into its DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalFact {
    /// The org of the AMQP user that sent it (empty when it is none of the orgs').
    pub org: String,
    /// The reason code.
    pub reason: String,
    /// When the hub refused it (µs since the epoch).
    pub at: i64,
}

/// What a period holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The documents received in the period, with their receipts.
    pub documents: Vec<DocFact>,
    /// The refusals in the period.
    pub refusals: Vec<RefusalFact>,
}

/// What the rows are per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The sending department.
    Org,
    /// The doc type (refusals, whose doc type is unknown, in a row of their own).
    DocType,
    /// The subscriber (its copies, receipts and latency; refusals are the senders').
    Subscriber,
    /// The day the hub received the document (or refused the message), at the offset
    /// [`aggregate`] is given.
    Day,
}

impl std::str::FromStr for By {
    type Err = String;

    fn from_str(s: &str) -> Result<By, String> {
        match s {
            "org" => Ok(By::Org),
            "doc_type" => Ok(By::DocType),
            "subscriber" => Ok(By::Subscriber),
            "day" => Ok(By::Day),
            other => Err(format!("{other:?}: org, doc_type, subscriber or day")),
        }
    }
}

/// One row of statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// The org, doc type, subscriber or day.
    pub key: String,
    /// Documents received (for a subscriber: copies routed to it).
    pub documents: u64,
    /// Messages the hub refused, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Copies routed to subscribers.
    pub routed: u64,
    /// Copies subscribers said they applied.
    pub applied: u64,
    /// Copies subscribers said they refused.
    pub refused_by_subscribers: u64,
    /// Median time from the hub receiving a document to a subscriber's receipt that it applied
    /// it, in milliseconds.
    pub applied_p50_ms: Option<f64>,
    /// The 95th percentile of the same.
    pub applied_p95_ms: Option<f64>,
}

/// The row key of documents whose doc type the hub could not know (refused before decoding).
pub const NOT_ADMITTED: &str = "(refused before admission)";

/// Counts `facts` per `by`, rows in key order; days are local days at `offset_secs` east of
/// UTC (`28800` for China Standard Time), so that a day is the office's working day.
pub fn aggregate(facts: &Facts, by: By, offset_secs: i32) -> Vec<Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut latencies: HashMap<String, Vec<i64>> = HashMap::new();
    let day = |micros: i64| {
        Timestamp::from_unix_micros_at(micros, offset_secs)
            .to_string()
            .chars()
            .take(10)
            .collect::<String>()
    };
    for d in &facts.documents {
        let keys: Vec<String> = match by {
            By::Org => vec![d.org.clone()],
            By::DocType => vec![d.doc_type.clone()],
            By::Day => vec![day(d.received_at)],
            By::Subscriber => d.subscribers.clone(),
        };
        for key in keys {
            let row = rows.entry(key.clone()).or_default();
            row.documents += 1;
            let mine = |s: &str| by != By::Subscriber || s == key;
            row.routed += d.subscribers.iter().filter(|s| mine(s)).count() as u64;
            for (_, outcome, at) in d.receipts.iter().filter(|(s, _, _)| mine(s)) {
                if outcome == crate::archive::APPLIED {
                    row.applied += 1;
                    latencies.entry(key.clone()).or_default().push(at - d.received_at);
                } else {
                    row.refused_by_subscribers += 1;
                }
            }
        }
    }
    for r in &facts.refusals {
        let key = match by {
            By::Org => r.org.clone(),
            By::DocType => NOT_ADMITTED.to_owned(),
            By::Day => day(r.at),
            // A refusal is its sender's, not a subscriber's.
            By::Subscriber => continue,
        };
        *rows
            .entry(key)
            .or_default()
            .refused
            .entry(r.reason.clone())
            .or_default() += 1;
    }
    rows.into_iter()
        .map(|(key, mut row)| {
            if let Some(v) = latencies.get_mut(&key) {
                v.sort_unstable();
                row.applied_p50_ms = quantile_ms(v, 0.5);
                row.applied_p95_ms = quantile_ms(v, 0.95);
            }
            row.key = key;
            row
        })
        .collect()
}

/// The `q` quantile of sorted µs values, in ms, by nearest rank.
fn quantile_ms(sorted: &[i64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * q).round() as usize;
    sorted.get(i).map(|us| *us as f64 / 1000.0)
}

/// The columns of the table and the CSV, in order.
pub const COLUMNS: [&str; 8] = [
    "key",
    "documents",
    "refused",
    "routed",
    "applied",
    "refused_by_subscribers",
    "applied_p50_ms",
    "applied_p95_ms",
];

/// An offset such as `--offset`'s: `+08:00`, `-05:00`, `Z` or `+00:00`, as seconds east of UTC.
pub fn parse_offset(text: &str) -> Result<i32, String> {
    let bad = || format!("{text:?} is not an offset like +08:00");
    if text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// A `--since` / `--until`: a timestamp as written, or a plain date (2026-11-22) as its midnight
/// at `offset_secs` east of UTC, as µs since the epoch.
pub fn parse_time_at(text: &str, offset_secs: i32) -> Result<i64, String> {
    let plain_date = text.len() == 10 && !text.contains('T');
    let utc = if plain_date {
        Timestamp::parse(&format!("{text}T00:00:00Z"))
    } else {
        Timestamp::parse(text)
    }
    .map(|t| t.unix_micros())
    .ok_or_else(|| format!("{text:?} is neither a date (2026-11-22) nor a timestamp (2026-11-22T08:00:00+08:00)"))?;
    Ok(if plain_date {
        utc - i64::from(offset_secs) * 1_000_000
    } else {
        utc
    })
}

/// Midnight of today at `offset_secs` east of UTC, as µs since the epoch.
pub fn start_of_today(offset_secs: i32) -> i64 {
    const DAY: i64 = 86_400_000_000;
    let offset = i64::from(offset_secs) * 1_000_000;
    (exhub_schemas::time::unix_micros_now() + offset).div_euclid(DAY) * DAY - offset
}

/// A row's cells, as [`COLUMNS`] names them: refusals as `reason:n` pairs, missing latencies
/// empty.
pub fn cells(r: &Row) -> Vec<String> {
    let refused: Vec<String> = r.refused.iter().map(|(reason, n)| format!("{reason}:{n}")).collect();
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
    vec![
        r.key.clone(),
        r.documents.to_string(),
        refused.join(" "),
        r.routed.to_string(),
        r.applied.to_string(),
        r.refused_by_subscribers.to_string(),
        ms(r.applied_p50_ms),
        ms(r.applied_p95_ms),
    ]
}

/// A CSV cell, quoted when it must be (RFC 4180).
pub fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_owned()
    }
}

/// The rows as CSV: a header line of [`COLUMNS`], then one line per row.
pub fn csv(rows: &[Row]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&cells(r).iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_as_seconds_east_of_utc() {
        assert_eq!(parse_offset("+08:00"), Ok(28_800));
        assert_eq!(parse_offset("-05:30"), Ok(-19_800));
        assert_eq!(parse_offset("Z"), Ok(0));
        for bad in ["08:00", "+8", "+24:00", "+08:60", "", "+008:00"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plain_date_is_midnight_at_the_offset() {
        let utc = parse_time_at("2026-11-22", 0).unwrap();
        assert_eq!(parse_time_at("2026-11-22", 28_800), Ok(utc - 28_800_000_000));
        let written = "2026-11-22T08:00:00+08:00";
        assert_eq!(parse_time_at(written, 28_800), parse_time_at(written, 0));
        assert!(parse_time_at("22/11/2026", 0).is_err());
    }

    #[test]
    fn today_starts_at_local_midnight() {
        let start = start_of_today(28_800);
        let now = exhub_schemas::time::unix_micros_now();
        assert!(start <= now && now - start < 86_400_000_000);
        assert_eq!((start + 28_800_000_000) % 86_400_000_000, 0);
    }

    fn doc(org: &str, doc_type: &str, at: i64, subs: &[&str], receipts: &[(&str, &str, i64)]) -> DocFact {
        DocFact {
            org: org.into(),
            doc_type: doc_type.into(),
            received_at: at,
            subscribers: subs.iter().map(|s| s.to_string()).collect(),
            receipts: receipts
                .iter()
                .map(|(s, o, t)| (s.to_string(), o.to_string(), *t))
                .collect(),
        }
    }

    fn facts() -> Facts {
        const DAY: i64 = 86_400_000_000;
        Facts {
            documents: vec![
                doc(
                    "tax",
                    "tax.registration",
                    0,
                    &["a", "b"],
                    &[("a", "applied", 10_000), ("b", "refused", 5_000)],
                ),
                doc(
                    "tax",
                    "tax.registration",
                    DAY,
                    &["a"],
                    &[("a", "applied", DAY + 30_000)],
                ),
                doc("commerce", "commerce.business_license", DAY + 1, &["b"], &[]),
            ],
            refusals: vec![
                RefusalFact {
                    org: "tax".into(),
                    reason: "schema".into(),
                    at: 5,
                },
                RefusalFact {
                    org: "tax".into(),
                    reason: "schema".into(),
                    at: DAY + 5,
                },
            ],
        }
    }

    #[test]
    fn rows_per_org_count_documents_copies_receipts_and_refusals() {
        let rows = aggregate(&facts(), By::Org, 0);
        assert_eq!(rows.len(), 2);
        let tax = &rows[1];
        assert_eq!(
            (tax.key.as_str(), tax.documents, tax.routed, tax.applied),
            ("tax", 2, 3, 2)
        );
        assert_eq!(tax.refused_by_subscribers, 1);
        assert_eq!(tax.refused.get("schema"), Some(&2));
        assert_eq!((tax.applied_p50_ms, tax.applied_p95_ms), (Some(30.0), Some(30.0)));
        let commerce = &rows[0];
        assert_eq!((commerce.documents, commerce.routed, commerce.applied), (1, 1, 0));
        assert_eq!(commerce.applied_p50_ms, None);
    }

    #[test]
    fn rows_per_subscriber_count_only_its_own_copies() {
        let rows = aggregate(&facts(), By::Subscriber, 0);
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!((rows[0].documents, rows[0].routed, rows[0].applied), (2, 2, 2));
        assert_eq!(
            (rows[1].documents, rows[1].applied, rows[1].refused_by_subscribers),
            (2, 0, 1)
        );
        assert!(rows.iter().all(|r| r.refused.is_empty()));
    }

    #[test]
    fn rows_per_day_and_doc_type() {
        let days = aggregate(&facts(), By::Day, 0);
        let keys: Vec<&str> = days.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["1970-01-01", "1970-01-02"]);
        assert_eq!((days[0].documents, days[1].documents), (1, 2));
        assert_eq!(days[1].refused.get("schema"), Some(&1));
        let types = aggregate(&facts(), By::DocType, 0);
        assert_eq!(types[0].key, NOT_ADMITTED);
        assert_eq!(types[0].refused.get("schema"), Some(&2));
    }

    #[test]
    fn days_are_local_at_the_offset() {
        // 1970-01-01T20:00Z is already the 2nd in China (UTC+8).
        let evening = 20 * 3_600_000_000;
        let facts = Facts {
            documents: vec![doc("tax", "tax.registration", evening, &[], &[])],
            refusals: Vec::new(),
        };
        assert_eq!(aggregate(&facts, By::Day, 0)[0].key, "1970-01-01");
        assert_eq!(aggregate(&facts, By::Day, 8 * 3600)[0].key, "1970-01-02");
        assert_eq!(aggregate(&facts, By::Day, -8 * 3600)[0].key, "1970-01-01");
    }
}
