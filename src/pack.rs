//! `luna-lambda pack`: turns a built component (a `.wasm` file, a directory holding
//! `lambda.wasm`, or a Cargo package built for `wasm32-wasip2`) into an upload-ready
//! archive, and runs on it the same checks the server runs at create time.
//! Depends on `builder`, `runtime`, `config`, `model`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::builder::{self, archive::WASM_ENTRY};
use crate::config::Config;
use crate::model::{LambdaType, Parameters};
use crate::runtime::WasmEngine;

/// OpenAPI documents picked up beside the component, first match wins.
const OPENAPI_FILES: [&str; 3] = ["openapi.yaml", "openapi.yml", "openapi.json"];
const WASM_TARGET: &str = "wasm32-wasip2";

/// Packing failed before or after the checks.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The input does not lead to a component.
    #[error("{0}")]
    Input(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The archive fails the server's checks; every problem is listed.
    #[error("the archive would be rejected:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The compiler could not be set up.
    #[error("{0}")]
    Engine(String),
}

/// What was packed.
#[derive(Debug)]
pub struct Packed {
    /// The component packed.
    pub wasm: PathBuf,
    /// The OpenAPI document packed, if one was found.
    pub openapi: Option<PathBuf>,
    /// The archive bytes.
    pub archive: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds the component `input` names: the file itself, `lambda.wasm` in a directory,
/// or the release build of the Cargo package in a directory.
pub fn locate_component(input: &Path) -> Result<PathBuf, PackError> {
    if input.is_file() {
        return Ok(input.to_owned());
    }
    if !input.is_dir() {
        return Err(PackError::Input(format!(
            "{} is neither a .wasm file nor a directory",
            input.display()
        )));
    }
    let direct = input.join(WASM_ENTRY);
    if direct.is_file() {
        return Ok(direct);
    }
    let manifest = input.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|_| {
        PackError::Input(format!(
            "{} holds neither {WASM_ENTRY} nor a Cargo.toml",
            input.display()
        ))
    })?;
    let name = package_name(&text)
        .ok_or_else(|| PackError::Input(format!("{} has no [package] name", manifest.display())))?;
    let file = format!("{}.wasm", name.replace('-', "_"));
    // The package's own target directory, or a workspace's above it.
    let absolute = input.canonicalize().map_err(io(input))?;
    for dir in absolute.ancestors() {
        let candidate = dir
            .join("target")
            .join(WASM_TARGET)
            .join("release")
            .join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(PackError::Input(format!(
        "no built component for package '{name}': run `cargo build --release --target {WASM_TARGET}` in {} first",
        input.display()
    )))
}

fn package_name(manifest: &str) -> Option<String> {
    let value: toml::Value = toml::from_str(manifest).ok()?;
    value
        .get("package")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Zips the component (as `lambda.wasm`) and an OpenAPI document found beside it or in
/// `input` (a directory).
pub fn build_archive(input: &Path) -> Result<Packed, PackError> {
    let wasm = locate_component(input)?;
    let mut search = vec![];
    if input.is_dir() {
        search.push(input.to_owned());
    }
    if let Some(parent) = wasm.parent() {
        search.push(parent.to_owned());
    }
    let openapi = search
        .iter()
        .flat_map(|dir| OPENAPI_FILES.iter().map(move |f| dir.join(f)))
        .find(|p| p.is_file());

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut add = |name: &str, path: &Path| -> Result<(), PackError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        zip.start_file(name, options)
            .map_err(|e| PackError::Input(format!("zip: {e}")))?;
        zip.write_all(&bytes).map_err(io(path))
    };
    add(WASM_ENTRY, &wasm)?;
    if let Some(doc) = &openapi {
        let name = doc
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("openapi.yaml");
        add(name, doc)?;
    }
    let archive = zip
        .finish()
        .map_err(|e| PackError::Input(format!("zip: {e}")))?
        .into_inner();
    Ok(Packed {
        wasm,
        openapi,
        archive,
    })
}

/// Every problem the server would report for `archive` uploaded as `lambda_type`,
/// including the compile and the world check. Compiles into a scratch cache.
pub fn check(
    config: &Config,
    archive: &[u8],
    lambda_type: LambdaType,
) -> Result<Vec<String>, PackError> {
    let parameters = Parameters {
        lambda_type: Some(lambda_type),
        ..Parameters::default()
    };
    let upload = builder::check_upload(config, &parameters, &Default::default(), archive, false);
    let mut problems = upload.problems;
    if upload.no_container_backend {
        problems.push(builder::NO_CONTAINER_BACKEND.to_owned());
    }
    if problems.is_empty()
        && let Some(wasm) = &upload.archive.wasm
    {
        let scratch = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
        let mut settings = config.clone();
        // One compile: no need to reserve an instance pool.
        settings.engine.pooling = false;
        let engine = WasmEngine::new(&settings, scratch.path())
            .map_err(|e| PackError::Engine(e.to_string()))?;
        problems.extend(builder::wasm::check_component(&engine, wasm, lambda_type).problems);
    }
    Ok(problems)
}

/// Packs `input` into `output` if it passes every check.
pub fn pack(
    config: &Config,
    input: &Path,
    output: &Path,
    lambda_type: LambdaType,
) -> Result<Packed, PackError> {
    let packed = build_archive(input)?;
    let problems = check(config, &packed.archive, lambda_type)?;
    if !problems.is_empty() {
        return Err(PackError::Invalid(problems));
    }
    std::fs::write(output, &packed.archive).map_err(io(output))?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_components_and_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("Cargo.toml"),
            "[package]\nname = \"my-lambda\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let err = locate_component(root).unwrap_err().to_string();
        assert!(
            err.contains("cargo build --release --target wasm32-wasip2"),
            "{err}"
        );
        let built = root.join("target/wasm32-wasip2/release");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(built.join("my_lambda.wasm"), b"\0asm").unwrap();
        std::fs::write(root.join("openapi.yaml"), "openapi: 3.0.0\n").unwrap();
        let packed = build_archive(root).unwrap();
        assert!(packed.wasm.ends_with("my_lambda.wasm"));
        assert!(packed.openapi.unwrap().ends_with("openapi.yaml"));
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(packed.archive)).unwrap();
        let names: Vec<_> = zip.file_names().map(str::to_owned).collect();
        assert_eq!(names, ["lambda.wasm", "openapi.yaml"]);
        assert_eq!(zip.by_name("lambda.wasm").unwrap().size(), 4);
        assert!(locate_component(&root.join("absent")).is_err());
    }

    #[test]
    fn a_core_module_is_rejected_with_the_servers_words() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("core.wasm");
        std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
        let packed = build_archive(&wasm).unwrap();
        let problems = check(&Config::default(), &packed.archive, LambdaType::Standalone).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("core WebAssembly module")),
            "{problems:?}"
        );
        let err = pack(
            &Config::default(),
            &wasm,
            &dir.path().join("out.zip"),
            LambdaType::Standalone,
        )
        .unwrap_err();
        assert!(matches!(err, PackError::Invalid(_)));
        assert!(!dir.path().join("out.zip").exists());
    }
}
