//! Structured archives: zips written entry by entry from an arbitrary plan (safe and
//! unsafe names, directories, symlinks, stored and deflated data). Every rule of
//! API.md an archive breaks must be reported, and an archive that breaks none must
//! come back whole.

use std::collections::HashSet;
use std::io::{Cursor, Write};

use arbitrary::Arbitrary;
use luna_lambda::builder::archive::{WASM_ENTRY, inspect};
use luna_lambda::config::Limits;
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

#[derive(Arbitrary, Debug)]
enum Name {
    Wasm,
    Python,
    Dockerfile,
    OpenApi,
    Static(u8),
    Nested(String),
    Parent(String),
    Absolute(String),
    Raw(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Wasm => WASM_ENTRY.to_owned(),
            Name::Python => "lambda_main.py".to_owned(),
            Name::Dockerfile => "Dockerfile".to_owned(),
            Name::OpenApi => "openapi.json".to_owned(),
            Name::Static(n) => format!("static/{n}.py"),
            Name::Nested(s) => format!("lib/{s}"),
            Name::Parent(s) => format!("{s}/../escape"),
            Name::Absolute(s) => format!("/{s}"),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File { data: Vec<u8>, deflate: bool },
    Directory,
    Symlink(String),
}

#[derive(Arbitrary, Debug)]
pub struct Entry {
    name: Name,
    kind: Kind,
}

/// The path rules of API.md, restated independently of the validator.
fn unsafe_path(name: &str) -> bool {
    let b = name.as_bytes();
    name.is_empty()
        || name.starts_with('/')
        || name.starts_with('\\')
        || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
        || name.split(['/', '\\']).any(|part| part == "..")
        || name.contains('\0')
}

/// The checks of one input (the libFuzzer target and the corpus replay call this).
pub fn check(plan: Vec<Entry>) {
    let limits = Limits {
        max_archive_bytes: 1024 * 1024,
        max_uncompressed_bytes: 256 * 1024,
        max_entries: 32,
        max_compression_ratio: 100,
        ..Limits::default()
    };
    let mut out = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    // What the writer accepted (it refuses some names, e.g. repeated ones).
    let mut written: Vec<(String, &Kind)> = Vec::new();
    for entry in &plan {
        let name = entry.name.text();
        let ok = match &entry.kind {
            Kind::File { data, deflate } => {
                let method = if *deflate {
                    CompressionMethod::Deflated
                } else {
                    CompressionMethod::Stored
                };
                let options = SimpleFileOptions::default().compression_method(method);
                zip.start_file(name.as_str(), options).is_ok() && zip.write_all(data).is_ok()
            }
            Kind::Directory => zip
                .add_directory(name.as_str(), SimpleFileOptions::default())
                .is_ok(),
            Kind::Symlink(target) => zip
                .add_symlink(name.as_str(), target.as_str(), SimpleFileOptions::default())
                .is_ok(),
        };
        if !ok {
            return;
        }
        written.push((name, &entry.kind));
    }
    if zip.finish().is_err() {
        return;
    }
    let bytes = out.into_inner();
    let report = inspect(&bytes, &limits);

    let mut normalized = HashSet::new();
    let mut duplicate = false;
    for (name, _) in &written {
        duplicate |= !normalized.insert(name.trim_end_matches('/').to_owned());
    }
    let bad_path = written.iter().any(|(name, _)| unsafe_path(name));
    let symlink = written.iter().any(|(_, k)| matches!(k, Kind::Symlink(_)));
    if bad_path || symlink || duplicate {
        assert!(
            !report.problems.is_empty(),
            "unsafe archive accepted: {written:?}"
        );
        return;
    }

    // An archive breaking no rule: one stored `lambda.wasm` and plain other files.
    let wasm: Vec<&Vec<u8>> = written
        .iter()
        .filter_map(|(name, kind)| match kind {
            Kind::File { data, .. } if name == WASM_ENTRY => Some(data),
            _ => None,
        })
        .collect();
    let total: usize = written
        .iter()
        .map(|(_, kind)| match kind {
            Kind::File { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    let plain = written.iter().all(|(name, kind)| {
        let base = name.trim_end_matches('/');
        let special = base == "lambda_main.py"
            || base == "Dockerfile"
            || base.starts_with("openapi.")
            || (base == WASM_ENTRY && !matches!(kind, Kind::File { .. }));
        !special && !matches!(kind, Kind::File { deflate: true, .. })
    });
    if wasm.len() == 1
        && plain
        && written.len() <= limits.max_entries
        && total as u64 <= limits.max_uncompressed_bytes
    {
        assert!(
            report.problems.is_empty(),
            "valid archive refused: {:?} for {written:?}",
            report.problems
        );
        assert_eq!(report.wasm.as_ref(), Some(wasm[0]));
    }
}
