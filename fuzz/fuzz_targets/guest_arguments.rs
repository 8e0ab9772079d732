//! libFuzzer driver of `fuzz/harness/guest_arguments.rs`, where the checks live (`cargo test`
//! replays this target's corpus through the same checks on the stable toolchain).
#![no_main]

#[path = "../harness/guest_arguments.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|input: harness::Input| harness::check(input));
