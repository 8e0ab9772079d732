//! Archive validation: zip structure, the safety rules of API.md (paths, symlinks,
//! duplicates, encryption, sizes, compression ratio) and the runtime the archive asks
//! for. Pure: bytes in, a report out. Depends on `model` and `config` only.

use std::collections::HashSet;
use std::io::{Cursor, Read};

use crate::config::Limits;
use crate::model::Runtime;

/// The component file of a WASM lambda.
pub const WASM_ENTRY: &str = "lambda.wasm";
/// The entry point of a LUNA Python lambda.
pub const PYTHON_ENTRY: &str = "lambda_main.py";
/// A custom container recipe.
pub const DOCKERFILE_ENTRY: &str = "Dockerfile";
const OPENAPI_ENTRIES: [&str; 3] = ["openapi.yml", "openapi.yaml", "openapi.json"];
const MAX_OPENAPI_BYTES: u64 = 4 * 1024 * 1024;
/// Largest Python source or Dockerfile read for checking.
const MAX_SOURCE_BYTES: u64 = 4 * 1024 * 1024;
/// Served as files by the runner, never imported: not parsed.
const STATIC_DIR: &str = "static/";
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// What an archive holds, and every problem found in it.
#[derive(Debug, Default)]
pub struct ArchiveReport {
    /// Every rule the archive breaks; empty when valid.
    pub problems: Vec<String>,
    /// The runtime its content asks for (None when it asks for none).
    pub runtime: Option<Runtime>,
    /// `lambda.wasm`, for WASM lambdas.
    pub wasm: Option<Vec<u8>>,
    /// The OpenAPI document it ships.
    pub openapi: Option<String>,
    /// Container lambdas: every `.py` file outside `static/` as (path, source).
    pub python: Vec<(String, String)>,
    /// Container lambdas: the archive's own `Dockerfile`.
    pub dockerfile: Option<String>,
}

/// Inspects an archive against the limits. Never panics, whatever the bytes.
pub fn inspect(bytes: &[u8], limits: &Limits) -> ArchiveReport {
    let mut report = ArchiveReport::default();
    if bytes.len() as u64 > limits.max_archive_bytes {
        report.problems.push(format!(
            "archive is {} bytes, over the limit of {} bytes",
            bytes.len(),
            limits.max_archive_bytes
        ));
        return report;
    }
    let mut zip = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(zip) => zip,
        Err(e) => {
            report
                .problems
                .push(format!("archive is not a valid zip file: {e}"));
            return report;
        }
    };
    // The reader keeps one entry per name, so entries are counted, and duplicate
    // names found, from the central directory itself.
    let raw_names = central_directory_names(bytes, &zip, limits.max_entries + 1);
    let entries = raw_names.len().max(zip.len());
    if entries > limits.max_entries {
        report.problems.push(format!(
            "archive has {entries} entries or more, over the limit of {}",
            limits.max_entries
        ));
        return report;
    }
    let mut distinct = HashSet::new();
    for name in &raw_names {
        if !distinct.insert(*name) {
            report.problems.push(format!(
                "entry '{}' appears more than once",
                String::from_utf8_lossy(name)
            ));
        }
    }

    let mut seen = HashSet::new();
    let mut total_declared: u64 = 0;
    let mut wanted: Vec<(usize, String)> = Vec::new();
    for index in 0..zip.len() {
        let entry = match zip.by_index_raw(index) {
            Ok(entry) => entry,
            Err(e) => {
                report
                    .problems
                    .push(format!("entry #{index} is unreadable: {e}"));
                continue;
            }
        };
        let Ok(name) = std::str::from_utf8(entry.name_raw()).map(str::to_owned) else {
            report
                .problems
                .push(format!("entry #{index} has a name that is not valid UTF-8"));
            continue;
        };
        if let Some(problem) = path_problem(&name) {
            report.problems.push(problem);
            continue;
        }
        if entry
            .unix_mode()
            .is_some_and(|mode| mode & S_IFMT == S_IFLNK)
        {
            report.problems.push(format!(
                "entry '{name}' is a symbolic link, which is not allowed"
            ));
        }
        if entry.encrypted() {
            report
                .problems
                .push(format!("entry '{name}' is encrypted, which is not allowed"));
        }
        let normalized = name.trim_end_matches('/').to_owned();
        if !seen.insert(normalized.clone()) {
            report
                .problems
                .push(format!("entry '{name}' appears more than once"));
        }
        let (size, packed) = (entry.size(), entry.compressed_size());
        if packed > 0 && size / packed > limits.max_compression_ratio {
            report.problems.push(format!(
                "entry '{name}' has a compression ratio of {}, over the limit of {} (zip bomb?)",
                size / packed,
                limits.max_compression_ratio
            ));
        } else if packed == 0 && size > 0 {
            report
                .problems
                .push(format!("entry '{name}' declares content but stores none"));
        }
        total_declared = total_declared.saturating_add(size);
        let is_source = normalized == DOCKERFILE_ENTRY
            || (normalized.ends_with(".py") && !normalized.starts_with(STATIC_DIR));
        if !entry.is_dir()
            && (normalized == WASM_ENTRY
                || OPENAPI_ENTRIES.contains(&normalized.as_str())
                || is_source)
        {
            wanted.push((index, normalized));
        }
    }
    if total_declared > limits.max_uncompressed_bytes {
        report.problems.push(format!(
            "archive expands to {total_declared} bytes, over the limit of {} bytes",
            limits.max_uncompressed_bytes
        ));
    }

    let is_wasm = seen.contains(WASM_ENTRY);
    let is_container = seen.contains(PYTHON_ENTRY) || seen.contains(DOCKERFILE_ENTRY);
    report.runtime = match (is_wasm, is_container) {
        (true, _) => Some(Runtime::Wasm),
        (false, true) => Some(Runtime::Container),
        (false, false) => {
            report.problems.push(format!(
                "archive root holds neither '{WASM_ENTRY}' (WASM lambda) nor '{PYTHON_ENTRY}' / '{DOCKERFILE_ENTRY}' (container lambda)"
            ));
            None
        }
    };
    if is_wasm && is_container {
        report.problems.push(format!(
            "archive holds both '{WASM_ENTRY}' and a container entry point: ship one runtime"
        ));
    }
    if !report.problems.is_empty() {
        return report;
    }

    // Entries are read with the real decompressed size capped: headers can lie.
    for (index, name) in wanted {
        let is_openapi = OPENAPI_ENTRIES.contains(&name.as_str());
        let cap = match name.as_str() {
            WASM_ENTRY => limits.max_uncompressed_bytes,
            _ if is_openapi => MAX_OPENAPI_BYTES,
            // Sources matter only to container lambdas.
            _ if !is_container || is_wasm => continue,
            _ => MAX_SOURCE_BYTES,
        };
        let data = match read_capped(&mut zip, index, cap) {
            Ok(data) if name == WASM_ENTRY => {
                report.wasm = Some(data);
                continue;
            }
            Ok(data) => data,
            Err(problem) => {
                report.problems.push(format!("entry '{name}': {problem}"));
                continue;
            }
        };
        let Ok(text) = String::from_utf8(data) else {
            report.problems.push(format!("'{name}' is not UTF-8 text"));
            continue;
        };
        if is_openapi {
            report.openapi = Some(text);
        } else if name == DOCKERFILE_ENTRY {
            report.dockerfile = Some(text);
        } else {
            report.python.push((name, text));
        }
    }
    report
}

/// Names of the central directory's records, read directly (at most `cap`).
fn central_directory_names<'a>(
    bytes: &'a [u8],
    zip: &zip::ZipArchive<Cursor<&[u8]>>,
    cap: usize,
) -> Vec<&'a [u8]> {
    const SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    const FIXED: usize = 46;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let candidates = [
        zip.central_directory_start(),
        zip.central_directory_start().saturating_add(zip.offset()),
    ];
    let Some(mut at) = candidates
        .iter()
        .filter_map(|c| usize::try_from(*c).ok())
        .find(|c| bytes.get(*c..*c + 4) == Some(&SIGNATURE[..]))
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    while names.len() < cap && bytes.get(at..at + 4) == Some(&SIGNATURE[..]) {
        let (name_len, extra_len, comment_len) =
            (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let Some(name) = bytes.get(at + FIXED..at + FIXED + name_len) else {
            break;
        };
        names.push(name);
        at += FIXED + name_len + extra_len + comment_len;
    }
    names
}

fn read_capped(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    index: usize,
    cap: u64,
) -> Result<Vec<u8>, String> {
    let entry = zip.by_index(index).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    entry
        .take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot be decompressed: {e}"))?;
    if data.len() as u64 > cap {
        return Err(format!("expands beyond {cap} bytes"));
    }
    Ok(data)
}

fn path_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an entry has an empty name".to_owned());
    }
    let bytes = name.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if name.starts_with('/') || name.starts_with('\\') || drive {
        return Some(format!("entry '{name}' has an absolute path"));
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Some(format!("entry '{name}' has a '..' path component"));
    }
    if name.contains('\0') {
        return Some(format!("entry '{name}' has a NUL byte in its name"));
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// Builds a zip from (name, bytes) pairs.
    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut out);
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        out.into_inner()
    }

    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn wasm_archive_is_accepted() {
        let report = inspect(
            &zip_of(&[(WASM_ENTRY, COMPONENT), ("openapi.yaml", b"openapi: 3.0.0")]),
            &Limits::default(),
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.runtime, Some(Runtime::Wasm));
        assert_eq!(report.wasm.as_deref(), Some(COMPONENT));
        assert_eq!(report.openapi.as_deref(), Some("openapi: 3.0.0"));
    }

    #[test]
    fn container_archive_detected() {
        let report = inspect(
            &zip_of(&[(PYTHON_ENTRY, b"def main(r): pass")]),
            &Limits::default(),
        );
        assert_eq!(report.runtime, Some(Runtime::Container));
    }

    #[test]
    fn every_problem_is_reported() {
        let report = inspect(
            &zip_of(&[("../evil", b"x"), ("/abs", b"x"), ("readme.txt", b"x")]),
            &Limits::default(),
        );
        assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
    }

    #[test]
    fn not_a_zip() {
        let report = inspect(b"definitely not a zip", &Limits::default());
        assert!(report.problems[0].contains("not a valid zip"));
    }

    #[test]
    fn zip_bomb_is_rejected() {
        let zeros = vec![0u8; 2 * 1024 * 1024];
        let mut out = Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut out);
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file(WASM_ENTRY, opts).unwrap();
        w.write_all(&zeros).unwrap();
        w.finish().unwrap();
        let report = inspect(&out.into_inner(), &Limits::default());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("compression ratio")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn limits_apply() {
        let limits = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        let report = inspect(&zip_of(&[("a", b"x"), ("b", b"y")]), &limits);
        assert!(report.problems[0].contains("entries"));
        let limits = Limits {
            max_archive_bytes: 10,
            ..Limits::default()
        };
        assert!(inspect(&zip_of(&[("a", b"x")]), &limits).problems[0].contains("over the limit"));
    }

    #[test]
    fn symlink_is_rejected() {
        let mut out = Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut out);
        w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        w.start_file(WASM_ENTRY, SimpleFileOptions::default())
            .unwrap();
        w.write_all(COMPONENT).unwrap();
        w.finish().unwrap();
        let report = inspect(&out.into_inner(), &Limits::default());
        assert!(
            report.problems.iter().any(|p| p.contains("symbolic link")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn duplicate_names_are_found_in_the_central_directory() {
        let mut out = Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut out);
        w.start_file(WASM_ENTRY, SimpleFileOptions::default())
            .unwrap();
        w.write_all(COMPONENT).unwrap();
        w.finish().unwrap();
        let single = out.into_inner();
        // Splice a second central-directory record with the same name into the archive.
        let cd = single
            .windows(4)
            .position(|w| w == [0x50, 0x4b, 0x01, 0x02])
            .unwrap();
        let eocd = single
            .windows(4)
            .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
            .unwrap();
        let record = single[cd..eocd].to_vec();
        let mut doubled = single[..eocd].to_vec();
        doubled.extend_from_slice(&record);
        let mut tail = single[eocd..].to_vec();
        let count = u16::from_le_bytes([tail[10], tail[11]]) + 1;
        tail[8..10].copy_from_slice(&count.to_le_bytes());
        tail[10..12].copy_from_slice(&count.to_le_bytes());
        let size = u32::try_from(record.len() * 2).unwrap();
        tail[12..16].copy_from_slice(&size.to_le_bytes());
        doubled.extend_from_slice(&tail);
        let report = inspect(&doubled, &Limits::default());
        assert!(
            report.problems.iter().any(|p| p.contains("more than once")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn paths() {
        assert!(path_problem("a/b.txt").is_none());
        assert!(path_problem("a/../b").is_some());
        assert!(path_problem("C:/x").is_some());
        assert!(path_problem("\\x").is_some());
    }
}
