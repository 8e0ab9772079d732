//! Arbitrary multipart bodies through the upload reader the create and recreate routes
//! use: it must never panic, and whatever it accepts must respect the part names, part
//! limits and "each part once".

use axum::extract::{FromRequest, Multipart};
use luna_lambda::config::Limits;
use luna_lambda::edge::input::read_upload;

const ALLOWED: [&str; 4] = ["archive", "credentials", "parameters", "deploy_parameters"];

/// The checks of one input (the libFuzzer target and the corpus replay call this).
pub fn check(body: &[u8]) {
    let limits = Limits {
        max_archive_bytes: 4096,
        max_json_bytes: 512,
        ..Limits::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let request = http::Request::builder()
            .method("POST")
            .header("content-type", "multipart/form-data; boundary=luna")
            .body(axum::body::Body::from(body.to_vec()))
            .expect("a fixed request head");
        let Ok(multipart) = Multipart::from_request(request, &()).await else {
            return;
        };
        if let Ok(parts) = read_upload(multipart, &ALLOWED, &limits).await {
            if let Some(archive) = &parts.archive {
                assert!(archive.len() as u64 <= limits.max_archive_bytes);
            }
            for json in [
                &parts.credentials,
                &parts.parameters,
                &parts.deploy_parameters,
            ]
            .into_iter()
            .flatten()
            {
                assert!(json.len() <= limits.max_json_bytes);
            }
        }
    });
}
