//! libFuzzer driver of `fuzz/harness/edge_values.rs`, where the checks live (`cargo test`
//! replays this target's corpus through the same checks on the stable toolchain).
#![no_main]

#[path = "../harness/edge_values.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| harness::check(bytes));
