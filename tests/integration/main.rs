//! The one integration test binary: every test starts the real `luna-lambda` binary
//! on 127.0.0.1:0 and speaks HTTP to it, but for `fuzz_corpora` (the fuzz corpora
//! replayed through the fuzz targets' checks) and `layers` (the import rule of
//! docs/architecture.md checked on the source).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

mod api;
mod auth;
mod containers;
mod examples;
mod fake_kube;
mod faults;
mod first_steps;
mod fuzz_corpora;
mod host;
mod kubernetes;
mod layers;
mod lifecycle;
mod postgres;
mod proxy;
mod replicas;
mod restart;
mod soak;
mod tenancy;
