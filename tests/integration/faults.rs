//! Faults of the machine under the service: a data directory that fills up during a
//! create costs that create a clear error and leaves nothing half-written; the service
//! keeps serving reads, its healthcheck names the store, and after a restart with room
//! again it accepts creates.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::*;

/// A small tmpfs mounted for the test and unmounted after it.
struct SmallFilesystem {
    path: std::path::PathBuf,
    _temp: tempfile::TempDir,
}

impl SmallFilesystem {
    /// None when this process may not mount (not root): the caller says so and stops.
    fn mount(size: &str) -> Option<Self> {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("fs");
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { path, _temp: temp })
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem of `dir` with one file until the next 64 KiB write fails.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    // Whole blocks only: the few KiB left let small writes (the store's) get further
    // than the archive before failing.
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    filler
}

fn names(list: &Value) -> Vec<String> {
    list["lambdas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lambda_name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_full_data_directory_costs_only_the_create() {
    let Some(fs) = SmallFilesystem::mount("64m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let data = fs.path.join("data");
    let s = Server::start_in(&data, &[]);
    let archive = |word: &str| {
        // A component header, then noise that does not compress, so the stored archive
        // really takes its size (the build fails later: that is not what is tested).
        let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
        wasm.extend(incompressible(1_000_000, word.len() as u64));
        zip_of(&[("lambda.wasm", &wasm), ("word.txt", word.as_bytes())])
    };
    let first = archive("before");
    let r = s
        .create_raw(ACCOUNT, Upload::new(first.clone()).named("before"))
        .await;
    assert_eq!(r.status(), 201);
    let before: Value = r.json().await.unwrap();
    // Its build (which fails: the component is only a header) is over before the disk fills.
    assert_eq!(
        s.wait_image(before["lambda_id"].as_str().unwrap()).await,
        "error"
    );

    let filler = fill(&fs.path);
    // The first reuses the stored archive, so its record reaches the store and the flush
    // is what fails: its config is larger than the room the store may still have in pages
    // it already holds. The others fail storing their archive.
    let large_config = json!({"blob": hex::encode(incompressible(400_000, 7))});
    for attempt in 0..3 {
        let name = format!("full{attempt}");
        let (upload, parameters) = if attempt == 0 {
            (
                first.clone(),
                json!({"lambda_name": name, "config": large_config}),
            )
        } else {
            (archive(&name), json!({"lambda_name": name}))
        };
        let r = s
            .create_raw(ACCOUNT, Upload::new(upload).parameters(parameters))
            .await;
        let body = assert_error(r, 500, 1).await;
        assert_eq!(body["detail"], "internal server error", "no internal text");
    }
    // The service still answers, lists what it had, and kept no part of the refused ones.
    assert_eq!(s.get("/version").await.status(), 200);
    let (code, list) = s.get_json("/1/lambdas").await;
    assert_eq!(code, 200);
    assert_eq!(names(&list), ["before"]);
    let leftovers: Vec<String> = std::fs::read_dir(data.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The store refuses writes after a write error (sled keeps it): the healthcheck says so,
    // for the supervisor to restart the service.
    let (code, health) = s.get_json("/healthcheck").await;
    assert_eq!(code, 502, "{health}");
    assert_eq!(health["errors"][0]["component"], "store");

    // Room again and a restart: what was acknowledged is there, the next create is taken.
    drop(s);
    std::fs::remove_file(filler).unwrap();
    let s = Server::start_in(&data, &[]);
    let (_, list) = s.get_json("/1/lambdas").await;
    assert_eq!(names(&list), ["before"]);
    let r = s
        .create_raw(ACCOUNT, Upload::new(archive("after")).named("after"))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let (_, list) = s.get_json("/1/lambdas").await;
    let mut listed = names(&list);
    listed.sort();
    assert_eq!(listed, ["after", "before"]);
    assert_eq!(s.get_json("/healthcheck").await.0, 200);
    drop(s);
}
