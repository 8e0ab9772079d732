//! A newcomer's first minutes: help, a mistyped flag, a bad setting, a taken port, an
//! unusable or shared data directory, starting with the defaults from any directory,
//! Ctrl-C. Each mistake is one line on stderr with the documented exit status (2 for
//! the command line and configuration, 1 for what fails at start).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn luna(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luna-lambda"))
        .args(args)
        .current_dir(cwd)
        .env("LUNA_LAMBDA_LOG_LEVEL", "warn")
        .output()
        .unwrap()
}

/// The one error line of a failed run: stderr holds exactly one line that starts with
/// `luna-lambda:` (log lines before it are allowed), and it is the last one.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("luna-lambda"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    errors[0].to_owned()
}

#[test]
fn help_names_the_commands_their_defaults_and_the_exit_statuses() {
    let here = tempfile::tempdir().unwrap();
    let out = luna(&["--help"], here.path());
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["serve", "pack", "127.0.0.1:5210", "Exit status"] {
        assert!(help.contains(needle), "no '{needle}' in:\n{help}");
    }
    let out = luna(&["serve", "--help"], here.path());
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "--data-dir",
        "--config",
        "./data",
        "LUNA_LAMBDA_",
    ] {
        assert!(help.contains(needle), "no '{needle}' in:\n{help}");
    }
    // No command at all: the help, as a usage error.
    let out = luna(&[], here.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve"));
}

#[test]
fn a_mistyped_command_line_is_one_line_naming_the_help_to_read() {
    let here = tempfile::tempdir().unwrap();
    for (args, needles) in [
        (
            &["serve", "--lsiten", "127.0.0.1:0"][..],
            &["--lsiten", "'luna-lambda serve --help'"][..],
        ),
        (&["serve", "--listen", "nowhere"], &["nowhere", "--listen"]),
        (&["srve"], &["srve", "'luna-lambda --help'"]),
    ] {
        let out = luna(args, here.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = error_line(&out);
        for needle in needles {
            assert!(line.contains(needle), "{args:?}: no '{needle}' in {line}");
        }
    }
    assert!(
        !here.path().join("data").exists(),
        "a refused command line creates nothing"
    );
}

#[tokio::test]
async fn the_defaults_start_from_any_directory_with_the_data_in_its_data_folder() {
    let here = tempfile::tempdir().unwrap();
    let s = Server::start_from(here.path(), &[], &here.path().join("data"));
    let (status, version) = s.get_json("/version").await;
    assert_eq!(status, 200, "{version}");
    // A WASM lambda builds into the compiled-artifact cache under ./data: the cache
    // refuses relative directories, so this fails if a relative path reaches it.
    let id = s.running_fixture(ACCOUNT, "first", None).await;
    assert!(here.path().join("data/store").is_dir());
    assert!(
        std::fs::read_dir(here.path().join("data/artifacts"))
            .unwrap()
            .next()
            .is_some()
    );
    let (_, config) = s.get_json("/1/config").await;
    assert_eq!(
        config["data_dir"],
        here.path().join("data").to_str().unwrap(),
        "every component sees the resolved path"
    );
    assert_eq!(
        s.proxy(reqwest::Method::GET, &id, "/hello").await.status(),
        200
    );
    // Ctrl-C is a clean stop.
    let status = s.stop_with("INT");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn relative_paths_from_flags_and_files_resolve_where_they_were_given() {
    let here = tempfile::tempdir().unwrap();
    let flagged = Server::start_from(
        here.path(),
        &["--data-dir", "state"],
        &here.path().join("state"),
    );
    assert_eq!(flagged.get_json("/version").await.0, 200);
    assert!(here.path().join("state/store").is_dir());
    assert_eq!(flagged.terminate().code(), Some(0));

    // A config file's own relative paths are relative to the file.
    std::fs::create_dir(here.path().join("etc")).unwrap();
    std::fs::write(
        here.path().join("etc/luna.toml"),
        "data_dir = \"../var/luna\"\n",
    )
    .unwrap();
    let data = here.path().join("etc/../var/luna");
    let filed = Server::start_from(here.path(), &["--config", "etc/luna.toml"], &data);
    assert_eq!(filed.get_json("/version").await.0, 200);
    assert!(here.path().join("var/luna/store").is_dir());
    assert_eq!(filed.terminate().code(), Some(0));
}

#[tokio::test]
async fn a_taken_port_or_data_directory_fails_the_start_in_one_line() {
    let here = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = luna(
        &["serve", "--listen", &address, "--data-dir", "d"],
        here.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(&address) && line.contains("--listen"),
        "{line}"
    );
    assert!(
        !here.path().join("d").exists(),
        "the port is checked before anything is opened"
    );

    // A second service on the data directory of a running one.
    let first = Server::start_from(here.path(), &[], &here.path().join("data"));
    let out = luna(&["serve", "--listen", "127.0.0.1:0"], here.path());
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("in use by another luna-lambda"), "{line}");
    assert_eq!(
        first.get_json("/version").await.0,
        200,
        "the first one goes on"
    );
    assert_eq!(first.terminate().code(), Some(0));

    // A data directory that cannot be made (its parent is a file; tests run as root,
    // for whom permissions are no obstacle).
    std::fs::write(here.path().join("file"), "").unwrap();
    let out = luna(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "file/data",
        ],
        here.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("file/data"), "{line}");
}
