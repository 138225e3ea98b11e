//! Generated sample documents for tests and benchmarks (feature `samples`): valid
//! `tax.registration` documents of about 1 KB, each with its own id and taxpayer, so that a
//! stream of them exercises decoding, validation, dedupe and routing like real traffic.

use crate::formats::uscc_with_check;

/// The `n`-th sample taxpayer id: a valid unified social credit code.
pub fn taxpayer_id(n: u64) -> String {
    uscc_with_check(&format!("914406057{:08}", n % 100_000_000)).unwrap_or_default()
}

/// A `tax.registration` document (JSON, about 1 KB) with id `id`, sent by `org`, for taxpayer
/// `n`, in `district`.
pub fn tax_registration(id: uuid::Uuid, org: &str, n: u64, district: &str) -> String {
    let taxpayer = taxpayer_id(n);
    format!(
        r#"{{"header":{{"id":"{id}","doc_type":"tax.registration","schema_version":1,"op":"upsert","sender":{{"org":"{org}","system":"ctais"}},"key":{{"taxpayer_id":"{taxpayer}"}},"source":{{"kind":"mysql","db":"ctais","table":"nsr_djxx","position":"mysql-bin.000003:{pos}","committed_at":"2026-11-22T08:00:00Z","tx":"0-1-{n}","seq":0}},"created_at":"2026-11-22T08:00:00.123Z","classification":"internal","test":false}},"body":{{"taxpayer_id":"{taxpayer}","name":"佛山市南海区桂城恒达五金制品有限公司第{n}分公司","legal_representative":"陈志强","registered_at":"2019-03-01","registration_type":"limited_liability","taxpayer_status":"normal","district":"{district}","address":"佛山市南海区桂城街道南海大道北68号恒达大厦A座三楼301室（{n}号）","capital":"1200000.00","industry_code":"C3389","tax_authority":"国家税务总局佛山市南海区税务局桂城税务分局","phone":"0757-8623{:04}","updated_at":"2026-11-22T16:00:00+08:00"}}}}"#,
        n % 10_000,
        pos = 4 + n * 1000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, Registry, decode};

    #[test]
    fn samples_are_valid_and_about_a_kilobyte() {
        let registry = Registry::builtin().unwrap();
        for n in [0, 1, 99_999_999, 123_456_789] {
            let text = tax_registration(uuid::Uuid::now_v7(), "nanhai.tax", n, "南海");
            let doc = decode(text.as_bytes(), &registry, &Limits::default()).unwrap();
            assert!(registry.validate(&doc).is_empty(), "{:?}", registry.validate(&doc));
            assert!((900..1300).contains(&text.len()), "{}", text.len());
        }
    }
}
