//! What a database kind offers the `exhub` binary, which knows kinds only through these traits
//! and one `match` per role: [`Kind`] (its routes.toml options and their check) and
//! [`SourceAdapter`] (building its source). Sinks add theirs in `exhub-sink`. A new database
//! is one crate implementing them, and one arm in each of the binary's matches.

use std::sync::Arc;

use exhub_schemas::Registry;
use serde::de::DeserializeOwned;

use crate::runner::AnySource;

use crate::source::SourceCommon;
/// An entry's options of its kind: every key of a `[[source]]` or `[[subscriber]]` entry
/// that is not common to all kinds.
pub use toml::Table as Options;

/// The part an entry of a kind plays: a `[[source]]` or a database `[[subscriber]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A source: the database's change log is read.
    Source,
    /// A sink: documents are applied to the database.
    Sink,
}

/// A database kind as routes.toml names it, with the check of its entries.
pub trait Kind: Sync {
    /// `kind = "…"` in routes.toml.
    fn kind(&self) -> &'static str;
    /// Problems of an entry in `role`: its URL's (`url`, its password left out) and its
    /// options' of this kind (every key that is not common to all kinds): unknown keys, bad
    /// values, TLS settings that cannot be honoured.
    fn check(&self, role: Role, url: &str, options: &Options) -> Vec<String>;
}

/// The options of a kind that has none in a role: any key is unknown.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// A kind that can be a source.
pub trait SourceAdapter: Kind {
    /// The source of an entry: `common` is what every source is told, `options` the entry's
    /// options of this kind (already checked).
    fn build(
        &self,
        common: SourceCommon,
        options: &Options,
        registry: Arc<Registry>,
    ) -> Result<Box<dyn AnySource>, String>;
}

/// The kinds the binary knows, for [`Kind::check`] by the config check.
pub trait Catalog {
    /// The kind named `kind` that can play `role`.
    fn kind(&self, role: Role, kind: &str) -> Option<&dyn Kind>;
    /// Every source kind, then every sink kind (for messages).
    fn kinds(&self) -> (Vec<&'static str>, Vec<&'static str>);
}

/// A kind's options, read from an entry's remaining keys: an unknown key is an error that
/// names it.
pub fn options<T: DeserializeOwned>(options: &Options) -> Result<T, String> {
    T::deserialize(toml::Value::Table(options.clone())).map_err(|e| e.message().trim().replace('\n', " "))
}

/// The problems of an entry in `role`: its URL's scheme must be one of `schemes`, and then
/// `read_url` (how the kind's driver reads the URL: its settings, its TLS files) must accept
/// it; then its options are read as `Source` or `Sink` (a kind's options per role;
/// [`NoOptions`] where it has none).
pub fn entry_problems<Source: DeserializeOwned, Sink: DeserializeOwned>(
    role: Role,
    url: &str,
    schemes: &[&str],
    read_url: impl FnOnce(&str) -> Result<(), String>,
    opts: &Options,
) -> Vec<String> {
    let url_problem = match scheme_problem(url, schemes) {
        Some(p) => Some(p),
        None => read_url(url).err(),
    };
    let options = match role {
        Role::Source => options::<Source>(opts).err(),
        Role::Sink => options::<Sink>(opts).err(),
    };
    url_problem.into_iter().chain(options).collect()
}

/// `url`'s scheme must be one of `schemes` (the problem, if not).
fn scheme_problem(url: &str, schemes: &[&str]) -> Option<String> {
    let scheme = url.split_once("://").map(|(s, _)| s)?;
    (!schemes.contains(&scheme)).then(|| format!("URL scheme {scheme:?} is not one of {}", schemes.join(", ")))
}

/// Parses a UTC offset `+08:00`, `-05:00` or `Z` into seconds east of UTC.
pub fn parse_offset(text: &str) -> Option<i32> {
    if text == "Z" || text == "UTC" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60 && h.to_string().len() <= 2).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[allow(dead_code)]
        server_id: Option<u32>,
    }

    #[test]
    fn an_option_of_another_kind_is_an_unknown_key() {
        let table: Options = toml::from_str("slot = \"exhub_x\"").unwrap();
        let e = options::<Opts>(&table).unwrap_err();
        assert!(e.contains("unknown field `slot`"), "{e}");
        let table: Options = toml::from_str("server_id = 7").unwrap();
        assert!(options::<Opts>(&table).is_ok());
    }

    #[test]
    fn offsets_and_schemes() {
        assert_eq!(parse_offset("+08:00"), Some(28_800));
        assert_eq!(parse_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_offset("8"), None);
        assert_eq!(scheme_problem("mysql://h/db", &["mysql"]), None);
        assert!(scheme_problem("postgres://h/db", &["mysql", "mariadb"]).is_some());
    }
}
