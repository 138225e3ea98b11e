//! Fuzzes the XML decoder: any input must give a document or an error, never a panic; a
//! document must survive XML → JSON → XML unchanged.
#![no_main]

use exhub_schemas::{Limits, Registry, decode, json, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let registry = Registry::builtin().expect("built-in schemas");
    let mut input = b"<".to_vec();
    input.extend_from_slice(data);
    if let Ok(doc) = decode(&input, &registry, &Limits::default()) {
        let again = decode(&json::encode(&doc), &registry, &Limits::default()).expect("own JSON decodes");
        assert_eq!(xml::encode(&again, &registry), xml::encode(&doc, &registry));
    }
});
