//! The committed fuzz corpora replayed through the fuzz targets' own checks
//! (`fuzz/harness/`) on the stable toolchain: every input the fuzzer kept, and every
//! crash input committed into a corpus after its fix, must pass on each `cargo test`.
//! Coverage-guided fuzzing itself (nightly, `fuzz/run.sh`) is run by hand with a time
//! budget; this keeps its findings from regressing at no build cost.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

/// Every input of `fuzz/corpus/<target>`, sorted by name (a failure names its file).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
    inputs
}

/// Runs `check` on every input and fails naming each input that panicked.
fn replay(target: &str, check: impl Fn(&[u8]) -> bool) {
    let inputs = corpus(target);
    let mut checked = 0;
    let mut failed = Vec::new();
    for (path, bytes) in &inputs {
        match catch_unwind(AssertUnwindSafe(|| check(bytes))) {
            Ok(ran) => checked += usize::from(ran),
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:?}");
    // A corpus that no longer decodes into the target's input type checks nothing.
    assert!(
        checked * 2 >= inputs.len(),
        "{target}: only {checked} of {} inputs decode",
        inputs.len()
    );
}

/// Decodes an input as libfuzzer-sys does for a typed target (`arbitrary_take_rest`;
/// an input that does not decode is skipped there too) and checks it.
fn structured<T: for<'a> Arbitrary<'a>>(check: fn(T)) -> impl Fn(&[u8]) -> bool {
    move |bytes| match T::arbitrary_take_rest(Unstructured::new(bytes)) {
        Ok(input) => {
            check(input);
            true
        }
        Err(_) => false,
    }
}

fn raw(check: fn(&[u8])) -> impl Fn(&[u8]) -> bool {
    move |bytes| {
        check(bytes);
        true
    }
}

#[test]
fn fuzz_corpus_archive_bytes_passes() {
    replay("archive_bytes", raw(harness::archive_bytes::check));
}

#[test]
fn fuzz_corpus_archive_entries_passes() {
    replay(
        "archive_entries",
        structured(harness::archive_entries::check),
    );
}

#[test]
fn fuzz_corpus_edge_values_passes() {
    replay("edge_values", raw(harness::edge_values::check));
}

#[test]
fn fuzz_corpus_guest_arguments_passes() {
    replay(
        "guest_arguments",
        structured(harness::guest_arguments::check),
    );
}

#[test]
fn fuzz_corpus_upload_multipart_passes() {
    replay("upload_multipart", raw(harness::upload_multipart::check));
}
