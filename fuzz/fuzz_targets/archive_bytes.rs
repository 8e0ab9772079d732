//! libFuzzer driver of `fuzz/harness/archive_bytes.rs`, where the checks live (`cargo test`
//! replays this target's corpus through the same checks on the stable toolchain).
#![no_main]

#[path = "../harness/archive_bytes.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| harness::check(bytes));
