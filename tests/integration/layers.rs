//! The layering rule of `docs/architecture.md`, checked on the source: every module of
//! `src/`, and every file of `src/runtime/`, imports only modules of layers below its
//! own. The layers are read from the document's `layers` blocks, so the page and the
//! check cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Module name -> layer rank (0 is the bottom), from the block opened by `header`
/// (rows top first).
fn layers(header: &str) -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let block = doc
        .split(&format!("{header}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("docs/architecture.md has no {header} block"));
    let rows: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut ranks = BTreeMap::new();
    for (from_top, row) in rows.iter().enumerate() {
        for module in row.split_whitespace() {
            ranks.insert(module.to_owned(), rows.len() - 1 - from_top);
        }
    }
    ranks
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names: `crate::x`, `crate::{x, y::z}`, and, in a
/// module's root file (`src/x.rs`, `src/x/mod.rs`), `super::x`.
fn imported_modules(text: &str, module_root: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut prefixes = vec!["crate::"];
    if module_root {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let ident: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() && ident != "self" {
                    found.push(ident);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let ranks = layers("```layers");
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "lib" || module == "main" {
            continue; // The crate root wires every layer together.
        }
        let Some(&rank) = ranks.get(&module) else {
            violations.push(format!(
                "src/{module} is in no layer of docs/architecture.md"
            ));
            continue;
        };
        let module_root = relative.components().count() == 1
            || relative.file_name().is_some_and(|n| n == "mod.rs");
        let text = std::fs::read_to_string(&file).unwrap();
        for imported in imported_modules(&text, module_root) {
            match ranks.get(&imported) {
                Some(&other) if imported != module && other >= rank => violations.push(format!(
                    "{} imports {imported} (layer {other}), not below {module} (layer {rank})",
                    relative.display()
                )),
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The same rule between the files of `src/runtime/`, which name each other `super::x`.
#[test]
fn no_runtime_file_imports_a_layer_above_its_own() {
    let ranks = layers("```layers runtime");
    let mut violations = Vec::new();
    for entry in std::fs::read_dir(root().join("src/runtime")).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "mod" {
            continue; // The module root re-exports every file.
        }
        let Some(&rank) = ranks.get(&module) else {
            violations.push(format!(
                "src/runtime/{module}.rs is in no layer of docs/architecture.md"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let siblings = imported_modules(&text, true)
            .into_iter()
            .filter(|name| ranks.contains_key(name) && *name != module);
        for imported in siblings {
            let other = ranks[&imported];
            if other >= rank {
                violations.push(format!(
                    "runtime/{module}.rs imports {imported} (layer {other}), not below {module} (layer {rank})"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_layer_check_sees_grouped_and_parent_imports() {
    let found = imported_modules(
        "use crate::{edge::ApiError, model};\nuse super::runtime::X;\nlet _ = crate::proxy::y;",
        true,
    );
    assert_eq!(found, ["edge", "model", "proxy", "runtime"]);
}
