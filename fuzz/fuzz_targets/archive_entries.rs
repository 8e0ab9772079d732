//! libFuzzer driver of `fuzz/harness/archive_entries.rs`, where the checks live (`cargo test`
//! replays this target's corpus through the same checks on the stable toolchain).
#![no_main]

#[path = "../harness/archive_entries.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|plan: Vec<harness::Entry>| harness::check(plan));
