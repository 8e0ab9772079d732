//! libFuzzer driver of `fuzz/harness/upload_multipart.rs`, where the checks live (`cargo test`
//! replays this target's corpus through the same checks on the stable toolchain).
#![no_main]

#[path = "../harness/upload_multipart.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|body: &[u8]| harness::check(body));
