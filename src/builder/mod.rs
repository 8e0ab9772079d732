//! Turning uploads into runnable lambdas: validation of an upload (parameters, deploy
//! parameters, archive, component or Python sources), the WASM build (compile into the
//! artifact cache + link) and the Docker build context of container lambdas. Depends on `runtime`, `config`, `model`.

pub mod archive;
pub mod container;
pub mod python;
pub mod wasm;

use sha2::{Digest, Sha256};

use crate::config::{Config, ContainerBackend};
use crate::model::{DeployParameters, Parameters, Runtime};

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
