//! The fuzz targets' checks, one module per target, shared by the libFuzzer drivers
//! (`fuzz/fuzz_targets/`, nightly, coverage-guided) and the corpus replay of the
//! integration tests (stable, `tests/integration/fuzz_corpora.rs`).

pub mod archive_bytes;
pub mod archive_entries;
pub mod edge_values;
pub mod guest_arguments;
pub mod upload_multipart;
