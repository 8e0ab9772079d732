//! Turning uploads into runnable lambdas: validation of an upload (parameters, deploy
//! parameters, archive, component or Python sources), the content-addressed archive
//! store, the WASM build (compile into the artifact cache + link) and the Docker build
//! context of container lambdas. Depends on `runtime`, `config`, `model`.

pub mod archive;
pub mod container;
pub mod python;
pub mod wasm;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{Config, ContainerBackend};
use crate::model::{DeployParameters, Parameters, Runtime};

/// Building or storing failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The archive file could not be written or read.
    #[error("archive storage: {0}")]
    Storage(#[from] std::io::Error),
}

/// The result of checking an upload: the archive's content and every problem.
#[derive(Debug)]
pub struct UploadCheck {
    /// What the archive holds.
    pub archive: archive::ArchiveReport,
    /// Every problem (parameters, deploy parameters, archive), in that order.
    pub problems: Vec<String>,
    /// The archive asks for a container runtime and no container backend is configured.
    pub no_container_backend: bool,
}

/// Message for a container archive on a server without a container backend.
pub const NO_CONTAINER_BACKEND: &str = "this archive is a container lambda (lambda_main.py or Dockerfile), \
    but this server has no container backend (container_backend = \"none\"): start it with \
    container_backend = \"docker\" or \"kubernetes\" (LUNA_LAMBDA_CONTAINER_BACKEND) to run \
    container lambdas, or ship a WebAssembly component as lambda.wasm";

/// Checks everything about an upload that does not need the compiler.
pub fn check_upload(
    config: &Config,
    parameters: &Parameters,
    deploy: &DeployParameters,
    archive_bytes: &[u8],
    name_required: bool,
) -> UploadCheck {
    let mut problems = parameters.problems(name_required);
    problems.extend(deploy.problems(&config.sandbox_bounds()));
    let report = archive::inspect(archive_bytes, &config.limits);
    problems.extend(report.problems.iter().cloned());
    let mut no_container_backend = false;
    match report.runtime {
        Some(Runtime::Wasm) => {
            problems.extend(parameters.wasm_problems());
            if let Some(wasm) = &report.wasm
                && let Some(p) = wasm::header_problem(wasm)
            {
                problems.push(p);
            }
        }
        Some(Runtime::Container) if config.container_backend == ContainerBackend::None => {
            no_container_backend = true;
        }
        Some(Runtime::Container) => {
            if deploy.sandbox.is_some() {
                problems.push(
                    "deploy_parameters.sandbox applies to WASM lambdas only (container lambdas use resources)"
                        .to_owned(),
                );
            }
            let containers = &config.containers;
            if report
                .python
                .iter()
                .any(|(p, _)| p == archive::PYTHON_ENTRY)
            {
                problems.extend(python::problems(
                    &report.python,
                    parameters.lambda_type.unwrap_or_default(),
                ));
                let base = container::base_image(parameters, &containers.base_image);
                if !containers.base_image_allowed(&base) {
                    problems.push(not_allowed(&format!("base_image '{base}'"), containers));
                }
            } else if let Some(dockerfile) = &report.dockerfile {
                problems.extend(dockerfile_problems(dockerfile, containers));
            }
        }
        None => {}
    }
    UploadCheck {
        archive: report,
        problems,
        no_container_backend,
    }
}

/// Why `what` (an image a lambda would build on) is refused, naming the allowed ones.
fn not_allowed(what: &str, containers: &crate::config::Containers) -> String {
    let allowed = if containers.allowed_base_images.is_empty() {
        containers.base_image.clone()
    } else {
        containers.allowed_base_images.join(", ")
    };
    format!("{what} is not one of the images this service builds on ({allowed})")
}

/// What is wrong with an archive's own Dockerfile: no `FROM`, or a `FROM` of an image
/// outside the operator's allow-list (another lambda's image included). A stage built
/// earlier in the same file may be named; `scratch` is no image at all.
fn dockerfile_problems(dockerfile: &str, containers: &crate::config::Containers) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    let mut any_from = false;
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|i| i.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        any_from = true;
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = words.next() else {
            problems.push("'Dockerfile' has a FROM without an image".to_owned());
            continue;
        };
        let image_lower = image.to_ascii_lowercase();
        let known = image_lower == "scratch"
            || stages.contains(&image_lower)
            || (!image.contains('$') && containers.base_image_allowed(image));
        if !known {
            problems.push(not_allowed(
                &format!("'Dockerfile': FROM {image}"),
                containers,
            ));
        }
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS"))
            && let Some(stage) = words.next()
        {
            stages.push(stage.to_ascii_lowercase());
        }
    }
    if !any_from {
        problems.push("'Dockerfile' has no FROM instruction".to_owned());
    }
    problems
}

/// sha256 as lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Archives on disk, named by content digest so identical uploads share a file.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    dir: PathBuf,
}

impl ArchiveStore {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> Result<Self, BuildError> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.zip"))
    }

    /// Writes the archive durably (temp file, fsync, rename); returns its digest.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BuildError> {
        use std::io::Write;
        let digest = digest(bytes);
        let path = self.path(&digest);
        if path.exists() {
            return Ok(digest);
        }
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut file = std::fs::File::create(&tmp)?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(digest)
    }

    /// Reads an archive back.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, BuildError> {
        Ok(std::fs::read(self.path(digest))?)
    }

    /// Removes an archive no lambda references any more.
    pub fn remove(&self, digest: &str) -> Result<(), BuildError> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Digests of every stored archive.
    pub fn digests(&self) -> Result<Vec<String>, BuildError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(digest) = name.strip_suffix(".zip")
                && !digest.starts_with('.')
            {
                out.push(digest.to_owned());
            }
        }
        Ok(out)
    }

    /// Removes temp files a crash left behind.
    pub fn sweep_temp_files(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_start_only_from_allowed_images() {
        let mut containers = crate::config::Containers::default();
        let problems = |text: &str, c: &crate::config::Containers| dockerfile_problems(text, c);
        assert!(problems("FROM luna-lambda/python:bookworm\nRUN x\n", &containers).is_empty());
        assert!(problems("FROM scratch\n", &containers).is_empty());
        // Another lambda's image, by the registry's name for it.
        let other = "FROM 127.0.0.1:5000/luna-lambda-0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11:1\n";
        assert_eq!(problems(other, &containers).len(), 1);
        assert_eq!(
            problems("FROM $BASE\n", &containers).len(),
            1,
            "unresolvable"
        );
        let staged = "FROM luna-lambda/python:bookworm AS deps\nFROM deps\n";
        assert!(problems(staged, &containers).is_empty(), "an earlier stage");
        assert_eq!(problems("RUN x\n", &containers).len(), 1, "no FROM");
        assert_eq!(
            problems("FROM --platform=linux/amd64 python:3.12\n", &containers).len(),
            1
        );
        containers.allowed_base_images = vec!["python:*".into(), "debian:bookworm".into()];
        assert!(problems("FROM --platform=linux/amd64 python:3.12\n", &containers).is_empty());
        assert!(problems("FROM debian:bookworm\n", &containers).is_empty());
        assert_eq!(problems("FROM debian:trixie\n", &containers).len(), 1);
        assert_eq!(
            problems("FROM python\n", &containers).len(),
            0,
            "python:latest"
        );
        assert_eq!(problems("FROM python:3/../x\n", &containers).len(), 1);
        assert!(!containers.base_image_allowed("luna-lambda/python:bookworm"));
    }

    #[test]
    fn archives_are_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::open(dir.path()).unwrap();
        let a = store.put(b"one").unwrap();
        assert_eq!(store.put(b"one").unwrap(), a);
        assert_eq!(store.get(&a).unwrap(), b"one");
        store.remove(&a).unwrap();
        assert!(store.get(&a).is_err());
        store.remove(&a).unwrap();
    }

    #[test]
    fn upload_reports_all_problems() {
        let config = Config::default();
        let params = Parameters {
            lambda_name: Some("bad name".into()),
            ..Default::default()
        };
        let check = check_upload(
            &config,
            &params,
            &DeployParameters::default(),
            b"nope",
            true,
        );
        assert_eq!(check.problems.len(), 2, "{:?}", check.problems);
        let zip = archive::tests::zip_of(&[("lambda_main.py", b"def main(r): pass")]);
        let ok_params = Parameters {
            lambda_name: Some("ok".into()),
            ..Default::default()
        };
        let check = check_upload(
            &config,
            &ok_params,
            &DeployParameters::default(),
            &zip,
            true,
        );
        assert!(check.no_container_backend);
    }
}
