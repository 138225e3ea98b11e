//! Integration tests of the exchange standard: round trips, bad input, canonical vectors,
//! validation, XSD. One binary (see STYLE.md §12).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bad_input;
mod canonical;
mod common;
mod roundtrip;
mod validation;
mod xsd;
