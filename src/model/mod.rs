//! Domain types shared by every module: ids, names, versions, statuses and the
//! lambda's user-supplied parameters. Parsed once at the edge ("parse, don't
//! validate"); depends on nothing else in the crate.

mod endpoint;
mod host_pattern;

pub use endpoint::Endpoint;
pub use host_pattern::HostPattern;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A malformed domain value; the message is safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn parse_uuid(raw: &str) -> Option<Uuid> {
    // LUNA ids are lowercase, hyphenated uuids: the canonical form is the only one accepted.
    let id = Uuid::parse_str(raw).ok()?;
    (id.hyphenated().to_string() == raw).then_some(id)
}

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                Self(Uuid::new_v4())
            }
            /// The 16 raw bytes (used as store keys).
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
            /// Rebuilds an id from store-key bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                parse_uuid(raw)
                    .map(Self)
                    .ok_or_else(|| InvalidValue(format!("'{raw}' is not a uuid")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_newtype!(
    /// The id of a lambda (a uuid chosen by the service).
    LambdaId
);
uuid_newtype!(
    /// The LUNA account a lambda belongs to.
    AccountId
);

/// `Luna-Request-Id`: `<unix seconds>,<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Generates an id in LUNA's default format.
    pub fn generate() -> Self {
        let secs = chrono::Utc::now().timestamp();
        Self(format!("{secs:010},{}", Uuid::new_v4().hyphenated()))
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RequestId {
    type Err = InvalidValue;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || {
            InvalidValue(format!(
                "Luna-Request-Id '{raw}' does not match '^[0-9]{{10}},<uuid>$'"
            ))
        };
        let (secs, id) = raw.split_once(',').ok_or_else(bad)?;
        if secs.len() != 10 || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let uuid_ok = id.len() == 36
            && id.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if !uuid_ok {
            return Err(bad());
        }
        Ok(Self(raw.to_owned()))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lambda name: 1..128 chars of `[a-zA-Z0-9_-]`, unique per account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LambdaName(String);

impl LambdaName {
    /// Maximum length in characters.
    pub const MAX_LEN: usize = 128;

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LambdaName {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidValue(format!(
                "lambda_name must be 1..{} characters long",
                Self::MAX_LEN
            )));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidValue(format!(
                "lambda_name '{raw}' does not match '^[a-zA-Z0-9_-]+$'"
            )));
        }
        Ok(Self(raw))
    }
}

impl From<LambdaName> for String {
    fn from(name: LambdaName) -> Self {
        name.0
    }
}

impl fmt::Display for LambdaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lambda's version: 1 at create, +1 on every recreate and update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u32);

impl Version {
    /// The version a new lambda starts with.
    pub const FIRST: Version = Version(1);

    /// The version after a rebuild.
    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How LUNA calls the lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaType {
    /// A free-form HTTP service.
    #[default]
    Standalone,
    /// LUNA handlers: called by luna-handlers with its request shape.
    Handlers,
    /// LUNA tasks: split content into subtasks and execute them.
    Tasks,
}

impl LambdaType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Handlers => "handlers",
            Self::Tasks => "tasks",
        }
    }
}

impl FromStr for LambdaType {
    type Err = InvalidValue;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "standalone" => Ok(Self::Standalone),
            "handlers" => Ok(Self::Handlers),
            "tasks" => Ok(Self::Tasks),
            other => Err(InvalidValue(format!(
                "'{other}' is not one of standalone, handlers, tasks"
            ))),
        }
    }
}

/// Where the lambda runs, decided by the archive's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `lambda.wasm`: a component served in-process.
    Wasm,
    /// `lambda_main.py` or a `Dockerfile`: a container image.
    Container,
}

/// The lambda's status as LUNA reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaStatus {
    /// Building or starting.
    Waiting,
    /// Serving requests.
    Running,
    /// All replicas stopped.
    Terminated,
    /// The build or deploy failed; image logs and lambda logs say why.
    Failed,
}

impl LambdaStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Terminated => "terminated",
            Self::Failed => "failed",
        }
    }
}

/// The status of the lambda's image build job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Queued, not started.
    Pending,
    /// Running.
    InProgress,
    /// Finished: the image (artifact) is ready.
    Completed,
    /// Finished with an error: the image logs say why.
    Error,
    /// No job is known (never built, or the job's retention has passed).
    NotFound,
}

impl ImageStatus {
    /// Whether the job has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Error)
    }
}

/// `base_image` of a container lambda.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// Image repository name.
    pub name: String,
    /// Image tag.
    pub tag: String,
}

impl BaseImage {
    /// Why the name or tag is not a valid image reference, if it is not.
    pub fn problem(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 255
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
            && self
                .name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        let tag_ok = (1..=128).contains(&self.tag.len())
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !self.tag.starts_with(['.', '-']);
        (!name_ok || !tag_ok).then(|| {
            format!(
                "base_image '{}:{}' is not a valid image reference (name: lowercase letters, digits, '.', '_', '-', '/', ':'; tag: up to 128 letters, digits, '.', '_', '-')",
                self.name, self.tag
            )
        })
    }
}

/// Instructions `additional_user_docker_commands` may not use: another stage, or a
/// change of what the runner is.
const FORBIDDEN_DOCKER_INSTRUCTIONS: [&str; 4] = ["FROM", "ONBUILD", "CMD", "ENTRYPOINT"];

/// `text` without its line ending, cut at `max_bytes` (on a character boundary) and
/// marked ` [truncated]` when cut: how every log line the service keeps is bounded.
pub fn bounded_line(text: &str, max_bytes: usize) -> String {
    let text = text.trim_end_matches(['\r', '\n']);
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} [truncated]", &text[..cut])
}

/// Why one of `additional_user_docker_commands` is refused, if it is.
pub fn docker_command_problem(cmd: &str) -> Option<String> {
    if cmd.contains(['\n', '\r']) {
        return Some(format!(
            "additional_user_docker_commands entries are single lines; '{}' holds a line break",
            cmd.escape_debug()
        ));
    }
    let trimmed = cmd.trim();
    let Some(instruction) = trimmed.split_whitespace().next() else {
        return Some("additional_user_docker_commands holds an empty command".to_owned());
    };
    if trimmed.ends_with('\\') {
        return Some(format!(
            "additional_user_docker_commands must not end with a line continuation: '{cmd}'"
        ));
    }
    if let Some(bad) = FORBIDDEN_DOCKER_INSTRUCTIONS
        .iter()
        .find(|i| instruction.eq_ignore_ascii_case(i))
    {
        return Some(format!(
            "additional_user_docker_commands must not contain {bad}: '{cmd}'"
        ));
    }
    // `COPY --from=...` / `RUN --mount=...,from=...` read other stages or images.
    let lower = trimmed.to_ascii_lowercase();
    if lower.contains("--from") || (lower.contains("--mount") && lower.contains("from=")) {
        return Some(format!(
            "additional_user_docker_commands must not read other stages or images (--from): '{cmd}'"
        ));
    }
    None
}

/// `parameters` of create / recreate / validate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Required on create.
    pub lambda_name: Option<String>,
    /// At most 256 characters.
    pub description: Option<String>,
    /// Default `standalone`.
    pub lambda_type: Option<LambdaType>,
    /// Container lambdas only.
    pub base_image: Option<BaseImage>,
    /// Container lambdas only: extra Dockerfile lines.
    pub additional_user_docker_commands: Option<Vec<String>>,
    /// 1..32, default 1.
    pub workers: Option<u32>,
    /// Free JSON object handed to the lambda.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Maximum description length.
pub const MAX_DESCRIPTION_LEN: usize = 256;

impl Parameters {
    /// Every problem with the parameters (empty when valid). `name_required`
    /// is true on create and recreate.
    pub fn problems(&self, name_required: bool) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.lambda_name {
            Some(name) => {
                if let Err(e) = LambdaName::try_from(name.clone()) {
                    problems.push(e.0);
                }
            }
            None if name_required => problems.push("parameters.lambda_name is required".to_owned()),
            None => {}
        }
        if let Some(d) = &self.description
            && d.chars().count() > MAX_DESCRIPTION_LEN
        {
            problems.push(format!(
                "description must be at most {MAX_DESCRIPTION_LEN} characters"
            ));
        }
        if let Some(w) = self.workers
            && !(1..=32).contains(&w)
        {
            problems.push(format!("workers must be in 1..32, got {w}"));
        }
        for cmd in self.additional_user_docker_commands.iter().flatten() {
            problems.extend(docker_command_problem(cmd));
        }
        if let Some(image) = &self.base_image {
            problems.extend(image.problem());
        }
        problems
    }

    /// Problems that only apply to WASM lambdas (container-only fields set).
    pub fn wasm_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.base_image.is_some() {
            problems.push("base_image applies to container lambdas only".to_owned());
        }
        if self
            .additional_user_docker_commands
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        {
            problems.push(
                "additional_user_docker_commands applies to container lambdas only".to_owned(),
            );
        }
        problems
    }
}

/// `deploy_parameters.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Millicores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<u32>,
    /// Millicores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<u32>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit: Option<f64>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_request: Option<f64>,
}

/// `deploy_parameters.sandbox`: limits of a WASM lambda's sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxParameters {
    /// Linear memory per instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u32>,
    /// Deadline of one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Requests executing at once; more are refused with 42010.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// host[:port] patterns the guest may call over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_outbound_hosts: Option<Vec<String>>,
}

/// `deploy_parameters` of create / recreate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployParameters {
    /// 0 or 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_enabled: Option<u8>,
    /// 1..64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_count: Option<u32>,
    /// CPU / RAM for container lambdas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Kubernetes namespace (also a list filter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Node selector labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// WASM sandbox limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxParameters>,
}

/// The namespace a lambda lands in when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Checks a Kubernetes namespace name the way LUNA does.
pub fn namespace_problem(ns: &str) -> Option<String> {
    let bytes = ns.as_bytes();
    let valid_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !(2..=63).contains(&ns.len()) || !valid_chars || !ends_ok {
        return Some(format!(
            "namespace '{ns}' must be 2..63 lowercase alphanumerics or '-', starting and ending alphanumeric"
        ));
    }
    if ns.starts_with("kube-") {
        return Some(format!("namespace '{ns}' is reserved (kube-*)"));
    }
    None
}

/// Upper bounds applied to sandbox parameters (from the service config).
#[derive(Debug, Clone, Copy)]
pub struct SandboxBounds {
    /// Largest `memory_limit_mb` accepted.
    pub max_memory_limit_mb: u32,
    /// Largest `request_timeout_ms` accepted.
    pub max_request_timeout_ms: u64,
    /// Largest `max_concurrent_requests` accepted.
    pub max_concurrent_requests: u32,
}

impl DeployParameters {
    /// Every problem with the deploy parameters (empty when valid).
    pub fn problems(&self, bounds: &SandboxBounds) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(g) = self.gpu_enabled
            && g > 1
        {
            problems.push(format!("gpu_enabled must be 0 or 1, got {g}"));
        }
        if let Some(p) = self.pod_count
            && !(1..=64).contains(&p)
        {
            problems.push(format!("pod_count must be in 1..64, got {p}"));
        }
        if let Some(ns) = &self.namespace
            && let Some(p) = namespace_problem(ns)
        {
            problems.push(p);
        }
        if let Some(r) = &self.resources {
            for (name, v) in [("ram_limit", r.ram_limit), ("ram_request", r.ram_request)] {
                if let Some(v) = v
                    && (!v.is_finite() || v <= 0.0)
                {
                    problems.push(format!("resources.{name} must be a positive number of GiB"));
                }
            }
        }
        if let Some(s) = &self.sandbox {
            if let Some(m) = s.memory_limit_mb
                && !(1..=bounds.max_memory_limit_mb).contains(&m)
            {
                problems.push(format!(
                    "sandbox.memory_limit_mb must be in 1..{}, got {m}",
                    bounds.max_memory_limit_mb
                ));
            }
            if let Some(t) = s.request_timeout_ms
                && !(1..=bounds.max_request_timeout_ms).contains(&t)
            {
                problems.push(format!(
                    "sandbox.request_timeout_ms must be in 1..{}, got {t}",
                    bounds.max_request_timeout_ms
                ));
            }
            if let Some(c) = s.max_concurrent_requests
                && !(1..=bounds.max_concurrent_requests).contains(&c)
            {
                problems.push(format!(
                    "sandbox.max_concurrent_requests must be in 1..{}, got {c}",
                    bounds.max_concurrent_requests
                ));
            }
            for host in s.allowed_outbound_hosts.iter().flatten() {
                if let Err(e) = HostPattern::parse(host) {
                    problems.push(format!("sandbox.allowed_outbound_hosts entry {e}"));
                }
            }
        }
        problems
    }

    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// Credentials handed to the lambda; stored encrypted, never returned.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Credentials {
    /// Login and password.
    Login(LoginCredentials),
    /// A bearer token.
    Token(TokenCredentials),
}

/// `{"login", "password"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginCredentials {
    /// Login.
    pub login: String,
    /// Password.
    pub password: String,
}

/// `{"token"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCredentials {
    /// Token.
    pub token: String,
}

impl fmt::Debug for LoginCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginCredentials")
            .field("login", &self.login)
            .field("password", &"********")
            .finish()
    }
}

impl fmt::Debug for TokenCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCredentials { token: \"********\" }")
    }
}

impl fmt::Debug for Credentials {
    // Secrets never reach logs, not even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login(c) => f
                .debug_struct("Credentials::Login")
                .field("login", &c.login)
                .field("password", &"********")
                .finish(),
            Self::Token(_) => f
                .debug_struct("Credentials::Token")
                .field("token", &"********")
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(super::bounded_line("short\r\n", 10), "short");
        assert_eq!(super::bounded_line("abcdef", 3), "abc [truncated]");
        // 'é' is two bytes: a cut inside it moves back before it.
        assert_eq!(super::bounded_line("aé", 2), "a [truncated]");
    }

    use super::*;

    #[test]
    fn request_id_accepts_luna_format_only() {
        let ok = "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a";
        assert_eq!(ok.parse::<RequestId>().unwrap().as_str(), ok);
        for bad in [
            "",
            "153675134,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
            "1536751345-8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
            "1536751345,8B8B5937-2e9c-4e8b-a7a7-5caf86621b5a",
            "1536751345,8b8b59372e9c4e8ba7a75caf86621b5a",
            "abcdefghij,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
        ] {
            assert!(bad.parse::<RequestId>().is_err(), "{bad}");
        }
        assert!(RequestId::generate().as_str().parse::<RequestId>().is_ok());
    }

    #[test]
    fn lambda_names() {
        assert!(LambdaName::try_from("first-lambda_1".to_owned()).is_ok());
        assert!(LambdaName::try_from(String::new()).is_err());
        assert!(LambdaName::try_from("a b".to_owned()).is_err());
        assert!(LambdaName::try_from("x".repeat(129)).is_err());
        assert!(LambdaName::try_from("x".repeat(128)).is_ok());
    }

    #[test]
    fn uuid_ids_are_canonical() {
        assert!(
            "8950722f-3fd4-4223-b48f-03f95f0e8dfb"
                .parse::<AccountId>()
                .is_ok()
        );
        assert!(
            "8950722F-3FD4-4223-B48F-03F95F0E8DFB"
                .parse::<AccountId>()
                .is_err()
        );
        assert!(
            "8950722f3fd44223b48f03f95f0e8dfb"
                .parse::<AccountId>()
                .is_err()
        );
        assert!("nope".parse::<LambdaId>().is_err());
    }

    #[test]
    fn namespaces() {
        assert!(namespace_problem("default").is_none());
        assert!(namespace_problem("no-default-namespace").is_none());
        for bad in ["a", "-ab", "ab-", "Ab", "kube-system", &"a".repeat(64)] {
            assert!(namespace_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn docker_commands_cannot_escape_the_generated_image() {
        for ok in [
            "RUN apt-get update",
            "ENV A=1",
            "copy file /x",
            "LABEL from=me",
        ] {
            assert_eq!(docker_command_problem(ok), None, "{ok}");
        }
        for bad in [
            "FROM scratch",
            " from x AS y",
            "CMD [\"sh\"]",
            "ENTRYPOINT sh",
            "ONBUILD RUN x",
            "COPY --from=builder /a /b",
            "RUN --mount=type=bind,from=other,target=/x true",
            "RUN a \\",
            "RUN a\nFROM b",
            "  ",
        ] {
            assert!(docker_command_problem(bad).is_some(), "{bad}");
        }
        let image = |name: &str, tag: &str| BaseImage {
            name: name.into(),
            tag: tag.into(),
        };
        assert_eq!(
            image("127.0.0.1:5000/luna/python", "3.11-slim").problem(),
            None
        );
        assert!(image("Bad Name", "1").problem().is_some());
        assert!(image("x", "a\nRUN y").problem().is_some());
        assert!(image("x", "").problem().is_some());
    }

    #[test]
    fn parameter_problems_are_all_reported() {
        let p = Parameters {
            lambda_name: Some("bad name".into()),
            description: Some("d".repeat(300)),
            workers: Some(99),
            additional_user_docker_commands: Some(vec!["FROM scratch".into()]),
            ..Default::default()
        };
        assert_eq!(p.problems(true).len(), 4);
        assert_eq!(Parameters::default().problems(true).len(), 1);
        assert!(Parameters::default().problems(false).is_empty());
    }

    #[test]
    fn credentials_parse_and_hide() {
        let c: Credentials = serde_json::from_str(r#"{"login":"u","password":"p"}"#).unwrap();
        assert!(!format!("{c:?}").contains("\"p\""));
        let t: Credentials = serde_json::from_str(r#"{"token":"secret"}"#).unwrap();
        assert!(!format!("{t:?}").contains("secret"));
        assert!(serde_json::from_str::<Credentials>(r#"{"other":1}"#).is_err());
        assert!(serde_json::from_str::<Credentials>(r#"{"token":"t","x":1}"#).is_err());
    }
}
