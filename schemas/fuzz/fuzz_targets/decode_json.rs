//! Fuzzes the JSON decoder: any input must give a document or an error, never a panic; a
//! document must survive JSON → XML → JSON unchanged.
#![no_main]

use exhub_schemas::{Limits, Registry, decode, json, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let registry = Registry::builtin().expect("built-in schemas");
    let mut input = b"{".to_vec();
    input.extend_from_slice(data);
    if let Ok(doc) = decode(&input, &registry, &Limits::default()) {
        let again = decode(xml::encode(&doc, &registry).as_bytes(), &registry, &Limits::default()).expect("own XML decodes");
        assert_eq!(json::encode(&again), json::encode(&doc));
    }
});
