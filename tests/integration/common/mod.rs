//! Test harness: builds the guest fixtures from source, starts the real `luna-lambda`
//! binary on 127.0.0.1:0 with a private data directory, and offers HTTP helpers.

use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

pub const ACCOUNT: &str = "8950722f-3fd4-4223-b48f-03f95f0e8dfb";
pub const OTHER_ACCOUNT: &str = "0468ca85-f6ca-4841-b30c-5ccc26b6f397";
/// Upper bound for anything the tests wait for (builds in a debug binary included).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The guests of the nested `tests/guests` workspace, built once per test run;
/// returns their output directory.
fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target").join("guests");
        // A fresh machine may lack the target; rustup adds it in seconds.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("tests/guests/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the guest fixtures failed: is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
        target.join("wasm32-wasip2/release")
    })
}

/// The fixture guest (`tests/guests/fixture`, written with `wstd`).
pub fn fixture_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| std::fs::read(guests_dir().join("fixture.wasm")).expect("fixture.wasm"))
}

/// Another guest of `tests/guests` by crate name: `bindgen-proxy` (plain
/// `wit-bindgen`), `sdk-probe` (the SDK).
pub fn guest_wasm(crate_name: &str) -> Vec<u8> {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    std::fs::read(guests_dir().join(&file)).expect(&file)
}

/// `len` bytes that do not compress (xorshift from `seed`), so an archive holding them
/// is as large as they are.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A zip of (name, bytes) entries.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
    out.into_inner()
}

/// The fixture with a custom section appended: the same behaviour, a distinct
/// component (so its build is a real compile, not a cache hit).
pub fn distinct_fixture_zip(tag: u8) -> Vec<u8> {
    let mut wasm = fixture_wasm().to_vec();
    wasm.extend_from_slice(&[0, 7, 5, b'p', b'a', b'd', b'-', b'x', tag]);
    zip_of(&[("lambda.wasm", &wasm)])
}

/// The fixture packed as a lambda archive.
pub fn fixture_zip() -> Vec<u8> {
    zip_of(&[("lambda.wasm", fixture_wasm())])
}

/// A running `luna-lambda serve` child process.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
}

impl Server {
    /// A server with a fresh data directory and the given `LUNA_LAMBDA_*` overrides.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let mut server = Self::start_in(&dir, env);
        server._temp = Some(temp);
        server
    }

    /// A server on an existing data directory (restart tests).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_luna-lambda"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("LUNA_LAMBDA_LOG_LEVEL", "info")
            // A small pool keeps many parallel test servers cheap.
            .env("LUNA_LAMBDA_ENGINE_POOL_INSTANCES", "64");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir)
    }

    /// `luna-lambda serve <args>` started in `workdir` as a user starts it (a free
    /// port through LUNA_LAMBDA_LISTEN, no flag added); `data_dir` is where the test
    /// expects the data to go (`workdir/data` by default).
    pub fn start_from(workdir: &Path, args: &[&str], data_dir: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_luna-lambda"));
        cmd.arg("serve")
            .args(args)
            .current_dir(workdir)
            .env("LUNA_LAMBDA_LOG_LEVEL", "info")
            .env("LUNA_LAMBDA_LISTEN", "127.0.0.1:0");
        // The log goes beside the data directory, which the service creates itself.
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        Self::spawn(cmd, data_dir)
    }

    /// Starts `cmd` (a `serve` command), its log beside `data_dir`, and waits for it to
    /// announce its address.
    fn spawn(mut cmd: Command, data_dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("luna-lambda starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("luna-lambda listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let Ok(base) = rx.recv_timeout(PATIENCE) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
            panic!("server did not announce its address; log:\n{log}");
        };
        Self {
            child,
            base,
            data_dir: data_dir.to_owned(),
            _temp: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request of any method to `path`, with no account unless the test adds one.
    pub fn call(&self, method: reqwest::Method, path: &str) -> Call {
        Call(self.http.request(method, self.url(path)))
    }

    /// The port the service listens on (guests call back to it on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("the base URL ends with a port")
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `signal` (a `kill -s` name: TERM, INT) and waits for the exit.
    pub fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-s", signal, &pid]).status();
        self.child.wait().unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST /1/lambdas with `upload` as `account`; returns the raw response.
    pub async fn create_raw(&self, account: &str, upload: Upload) -> reqwest::Response {
        self.call(reqwest::Method::POST, "/1/lambdas")
            .account(account)
            .upload(upload)
            .send()
            .await
    }

    /// Creates a lambda and returns its id (asserting 201).
    pub async fn create(
        &self,
        account: &str,
        name: &str,
        archive: Vec<u8>,
        deploy: Option<Value>,
    ) -> String {
        let upload = Upload::new(archive).named(name);
        let upload = match deploy {
            Some(deploy) => upload.deploy(deploy),
            None => upload,
        };
        let r = self.create_raw(account, upload).await;
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        let id = body["lambda_id"].as_str().unwrap().to_owned();
        assert_eq!(
            location.as_deref(),
            Some(format!("/1/lambdas/{id}").as_str())
        );
        id
    }

    /// Polls until the lambda's status is `want`; returns the status document.
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        eventually(&format!("lambda {id} reaches {want}"), || async move {
            let (code, body) = self.get_json(&format!("/1/lambdas/{id}/status")).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == want {
                return Ok(body);
            }
            let (_, image) = self.get_json(&format!("/1/lambdas/{id}/image/logs")).await;
            Err(StatusSeen {
                server: self,
                status: body,
                image,
            })
        })
        .await
    }

    /// Polls until the image status is finished; returns it.
    pub async fn wait_image(&self, id: &str) -> String {
        eventually(&format!("the image of {id} finishes"), || async move {
            let (_, body) = self
                .get_json(&format!("/1/lambdas/{id}/image/status"))
                .await;
            match body["status"].as_str().unwrap_or_default() {
                done @ ("completed" | "error" | "not_found") => Ok(done.to_owned()),
                _ => Err(body),
            }
        })
        .await
    }

    /// Creates the fixture lambda and waits until it runs.
    pub async fn running_fixture(
        &self,
        account: &str,
        name: &str,
        deploy: Option<Value>,
    ) -> String {
        let id = self.create(account, name, fixture_zip(), deploy).await;
        self.wait_status(&id, "running").await;
        id
    }

    pub async fn proxy(&self, method: reqwest::Method, id: &str, path: &str) -> reqwest::Response {
        self.http
            .request(method, self.url(&format!("/1/lambdas/{id}/proxy{path}")))
            .header("Luna-Account-Id", ACCOUNT)
            .send()
            .await
            .unwrap()
    }

    /// The server process's resident set size in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The build job's log lines, as one JSON text to search.
    pub async fn image_logs(&self, id: &str) -> String {
        self.get_json(&format!("/1/lambdas/{id}/image/logs"))
            .await
            .1
            .to_string()
    }

    /// `PUT /1/lambdas/{id}` (recreate) as `ACCOUNT`.
    pub async fn recreate(
        &self,
        id: &str,
        archive: Vec<u8>,
        parameters: Value,
    ) -> reqwest::Response {
        self.call(reqwest::Method::PUT, &format!("/1/lambdas/{id}"))
            .account(ACCOUNT)
            .upload(Upload::new(archive).parameters(parameters))
            .send()
            .await
    }

    /// `POST /1/lambdas/{id}/update` as `ACCOUNT`.
    pub async fn update(&self, id: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/1/lambdas/{id}/update")))
            .header("Luna-Account-Id", ACCOUNT)
            .send()
            .await
            .unwrap()
    }

    /// `DELETE /1/lambdas/{id}` with no account (the operator's view).
    pub async fn delete_lambda(&self, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/1/lambdas/{id}")))
            .send()
            .await
            .unwrap()
    }

    /// File descriptors the server process holds open, from `/proc`.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server process is alive")
            .count()
    }

    /// The value of a metric line starting with `prefix` (summed over matches).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry container tests push to (`.ci/run` serves one on 127.0.0.1:5000).
pub fn registry() -> String {
    std::env::var("LUNA_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".to_owned())
}

/// The id of a created lambda (asserting 201).
pub async fn created_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["lambda_id"].as_str().unwrap().to_owned()
}

/// The multipart body of create, recreate and validate, built part by part: by
/// default an archive (`application/zip`), credentials and parameters naming the
/// lambda "lambda"; each step replaces or drops one part.
#[derive(Clone)]
pub struct Upload {
    archive: Option<(Vec<u8>, &'static str)>,
    credentials: Option<String>,
    parameters: Option<String>,
    deploy: Option<String>,
    extra: Vec<(&'static str, String)>,
}

impl Upload {
    pub fn new(archive: Vec<u8>) -> Self {
        Self {
            archive: Some((archive, "application/zip")),
            credentials: Some(json!({"login": "user", "password": "hunter2"}).to_string()),
            parameters: Some(json!({"lambda_name": "lambda"}).to_string()),
            deploy: None,
            extra: Vec::new(),
        }
    }

    /// Parameters naming the lambda and nothing else.
    pub fn named(self, name: &str) -> Self {
        self.parameters(json!({ "lambda_name": name }))
    }

    pub fn parameters(mut self, parameters: Value) -> Self {
        self.parameters = Some(parameters.to_string());
        self
    }

    /// The parameters part as raw text (to send what is not JSON).
    pub fn parameters_text(mut self, text: &str) -> Self {
        self.parameters = Some(text.to_owned());
        self
    }

    pub fn deploy(mut self, deploy: Value) -> Self {
        self.deploy = Some(deploy.to_string());
        self
    }

    pub fn credentials(mut self, credentials: Value) -> Self {
        self.credentials = Some(credentials.to_string());
        self
    }

    /// The archive part with another Content-Type.
    pub fn archive_type(mut self, mime: &'static str) -> Self {
        if let Some((_, kind)) = &mut self.archive {
            *kind = mime;
        }
        self
    }

    pub fn without_archive(mut self) -> Self {
        self.archive = None;
        self
    }

    pub fn without_credentials(mut self) -> Self {
        self.credentials = None;
        self
    }

    pub fn without_parameters(mut self) -> Self {
        self.parameters = None;
        self
    }

    /// One more JSON part the contract does not know.
    pub fn extra_part(mut self, name: &'static str, value: Value) -> Self {
        self.extra.push((name, value.to_string()));
        self
    }

    pub fn form(self) -> Form {
        let json = |text: String| Part::text(text).mime_str("application/json").unwrap();
        let mut form = Form::new();
        if let Some((bytes, mime)) = self.archive {
            let part = Part::bytes(bytes).file_name("lambda.zip");
            form = form.part("archive", part.mime_str(mime).unwrap());
        }
        for (name, text) in [
            ("credentials", self.credentials),
            ("parameters", self.parameters),
            ("deploy_parameters", self.deploy),
        ] {
            if let Some(text) = text {
                form = form.part(name, json(text));
            }
        }
        for (name, text) in self.extra {
            form = form.part(name, json(text));
        }
        form
    }
}

/// One request to the server under test, built step by step and sent with `send`.
pub struct Call(reqwest::RequestBuilder);

impl Call {
    /// As the given account (`Luna-Account-Id`).
    pub fn account(self, account: &str) -> Self {
        self.header("Luna-Account-Id", account)
    }

    pub fn header(self, name: &str, value: &str) -> Self {
        Self(self.0.header(name, value))
    }

    pub fn json(self, body: &Value) -> Self {
        Self(self.0.json(body))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Self(self.0.body(body))
    }

    pub fn upload(self, upload: Upload) -> Self {
        Self(self.0.multipart(upload.form()))
    }

    pub async fn send(self) -> reqwest::Response {
        self.0.send().await.unwrap()
    }

    /// Sends and reads the status and the JSON body (`Null` when there is none).
    pub async fn send_json(self) -> (u16, Value) {
        let r = self.send().await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// The lambda ids of a list answer, in order.
pub fn listed_ids(list: &Value) -> Vec<String> {
    list["lambdas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lambda_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts a LUNA error response.
pub async fn assert_error(response: reqwest::Response, status: u16, code: u64) -> Value {
    let got = response.status().as_u16();
    assert!(
        response.headers().contains_key("luna-request-id"),
        "no request id on an error"
    );
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (got, body["error_code"].as_u64()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        body["desc"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// What `wait_status` saw last; the server's log is read only if the wait fails.
struct StatusSeen<'a> {
    server: &'a Server,
    status: Value,
    image: Value,
}

impl std::fmt::Display for StatusSeen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; image logs {}; server log:\n{}",
            self.status,
            self.image,
            self.server.log()
        )
    }
}

/// Waits until the lambda's logs contain `needle` (a guest may write after answering).
pub async fn wait_log(server: &Server, id: &str, needle: &str) {
    eventually(&format!("'{needle}' in the logs of {id}"), || async move {
        let logs = server.get_json(&format!("/1/lambdas/{id}/logs")).await.1;
        if logs.to_string().contains(needle) {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
}

/// The tests' one polling loop: runs `probe` every few milliseconds until it returns
/// `Ok`, and fails after PATIENCE naming what was awaited and the last thing seen.
pub async fn eventually<T, Seen, Probe>(what: &str, probe: impl FnMut() -> Probe) -> T
where
    Seen: std::fmt::Display,
    Probe: std::future::Future<Output = Result<T, Seen>>,
{
    eventually_within(PATIENCE, what, probe).await
}

/// `eventually` with a patience of its own: for what must happen well before something
/// else would (a guest stopped long before its deadline).
pub async fn eventually_within<T, Seen, Probe>(
    patience: Duration,
    what: &str,
    mut probe: impl FnMut() -> Probe,
) -> T
where
    Seen: std::fmt::Display,
    Probe: std::future::Future<Output = Result<T, Seen>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "waited {patience:?} for: {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A valid component whose compile is heavy: `functions` functions of straight-line
/// arithmetic over many live values (register pressure), each about a second of
/// Cranelift's time at 4,000 statements.
pub fn compile_heavy_component(functions: u32, statements: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Function, FunctionSection, Instruction, Module, ModuleSection, TypeSection,
        ValType,
    };
    const LOCALS: u32 = 400;
    let mut types = TypeSection::new();
    types.ty().function([ValType::I64], [ValType::I64]);
    let mut declared = FunctionSection::new();
    let mut code = CodeSection::new();
    for _ in 0..functions {
        declared.function(0);
        let mut body = Function::new([(LOCALS, ValType::I64)]);
        for n in 0..statements {
            // Each value is read again much later: all of them stay live.
            let (a, b, c) = (n % LOCALS, (n * 7 + 3) % LOCALS, (n * 13 + 5) % LOCALS);
            body.instruction(&Instruction::LocalGet(a + 1))
                .instruction(&Instruction::LocalGet(b + 1))
                .instruction(&Instruction::I64Mul)
                .instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::I64Add)
                .instruction(&Instruction::LocalSet(c + 1));
        }
        for n in 0..LOCALS {
            body.instruction(&Instruction::LocalGet(n + 1))
                .instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::I64Xor)
                .instruction(&Instruction::LocalSet(0));
        }
        body.instruction(&Instruction::LocalGet(0))
            .instruction(&Instruction::End);
        code.function(&body);
    }
    let mut module = Module::new();
    module.section(&types).section(&declared).section(&code);
    let mut component = wasm_encoder::Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}
