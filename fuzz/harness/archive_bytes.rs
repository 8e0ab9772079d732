//! Arbitrary bytes as an uploaded archive: the validator must never panic, and what it
//! reports must be consistent with what it extracted.

use luna_lambda::builder::archive::inspect;
use luna_lambda::config::Limits;
use luna_lambda::model::Runtime;

/// The checks of one input (the libFuzzer target and the corpus replay call this).
pub fn check(bytes: &[u8]) {
    // Small limits, so that inputs the fuzzer can reach also cross them.
    let limits = Limits {
        max_archive_bytes: 64 * 1024,
        max_uncompressed_bytes: 256 * 1024,
        max_entries: 32,
        max_compression_ratio: 100,
        ..Limits::default()
    };
    let report = inspect(bytes, &limits);
    if report.problems.is_empty() {
        assert!(report.runtime.is_some(), "a valid archive has a runtime");
    }
    if let Some(wasm) = &report.wasm {
        assert_eq!(report.runtime, Some(Runtime::Wasm));
        assert!(wasm.len() as u64 <= limits.max_uncompressed_bytes);
    }
    if report.dockerfile.is_some() || !report.python.is_empty() {
        assert_eq!(report.runtime, Some(Runtime::Container));
    }
}
