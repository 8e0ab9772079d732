//! Compiling untrusted components outside the service: the service binary started again
//! as `luna-lambda compile-worker`, which limits its own CPU time and data size, builds
//! an engine with the service's settings and compiles one component into the shared
//! compilation cache; the service then loads the result from the cache. A component
//! that makes Cranelift spin or allocate without end costs that child, never the
//! service, and ends at a limit that its validate or build names. The worker's engine
//! is `runtime::engine`'s (`run_compile_worker`). Depends on `config`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config as ServiceConfig;

/// The subcommand the service starts itself with.
pub const SUBCOMMAND: &str = "compile-worker";
/// What the worker prints when the component was in the cache already ...
pub(super) const CACHE_HIT: &str = "cache-hit";
/// ... and when it ran Cranelift.
pub(super) const COMPILED: &str = "compiled";
/// The worker's exit status when the component does not compile (its reason on stderr).
pub(super) const EXIT_INVALID: i32 = 3;
/// The worker's exit status when it cannot do its job (bad input, no engine).
pub(super) const EXIT_BROKEN: i32 = 4;
/// Bytes of the worker's stderr kept (a compile error's text).
const MAX_STDERR: u64 = 64 * 1024;

/// How the service runs compiles in a child.
#[derive(Debug, Clone)]
pub struct CompileWorker {
    /// The service's own binary.
    pub program: PathBuf,
    /// CPU seconds a compile may use (`builds.compile_cpu_secs`).
    pub cpu_secs: u64,
    /// MiB of data a compile may allocate (`builds.compile_memory_mb`).
    pub memory_mb: u64,
    /// Wall-clock time a compile may take (`builds.timeout_secs`).
    pub timeout: Duration,
}

/// A compile in a child did not produce a component.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The component does not compile (the compiler's reason).
    #[error("{0}")]
    Invalid(String),
    /// The compile used up its CPU time.
    #[error("compiling it took more than {0} s of CPU time (builds.compile_cpu_secs)")]
    CpuTime(u64),
    /// The compile used up its memory.
    #[error("compiling it needed more than {0} MiB of memory (builds.compile_memory_mb)")]
    Memory(u64),
    /// The compile ran past its wall-clock time and was ended.
    #[error("compiling it took longer than {0} s (builds.timeout_secs)")]
    Timeout(u64),
    /// The worker could not be run, or ended some other way.
    #[error("the compile worker failed: {0}")]
    Failed(String),
}

impl WorkerError {
    /// Whether the component itself is at fault by exceeding a limit of the service
    /// (rather than being invalid or the worker failing).
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::CpuTime(_) | Self::Memory(_) | Self::Timeout(_))
    }
}

impl CompileWorker {
    /// Compiles `wasm` in a child with `settings`' engine, into the cache at `cache_dir`;
    /// true when it was there already (no Cranelift run). Blocking.
    pub fn compile(
        &self,
        settings: &ServiceConfig,
        cache_dir: &Path,
        wasm: &[u8],
    ) -> Result<bool, WorkerError> {
        let failed = |what: &str, e: std::io::Error| WorkerError::Failed(format!("{what}: {e}"));
        let settings =
            serde_json::to_vec(settings).map_err(|e| WorkerError::Failed(e.to_string()))?;
        let mut child = Command::new(&self.program)
            .arg(SUBCOMMAND)
            .arg("--cache-dir")
            .arg(cache_dir)
            .arg("--cpu-secs")
            .arg(self.cpu_secs.to_string())
            .arg("--memory-mb")
            .arg(self.memory_mb.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed("cannot start", e))?;
        let stderr = child.stderr.take().map(|mut pipe| {
            // Read beside the wait: a long error must not fill the pipe and stall it.
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = (&mut pipe).take(MAX_STDERR).read_to_string(&mut text);
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                text
            })
        });
        if let Some(mut stdin) = child.stdin.take() {
            // The worker reads all of it before compiling; a worker that died early
            // shows in its status below.
            let _ = stdin
                .write_all(&settings)
                .and_then(|()| stdin.write_all(b"\n"))
                .and_then(|()| stdin.write_all(wasm));
        }
        let status = self.wait(&mut child)?;
        let stderr = stderr
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        let mut said = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            // One word, written before the worker exited: the pipe holds it.
            let _ = (&mut stdout).take(64).read_to_string(&mut said);
        }
        match status {
            Waited::TimedOut => Err(WorkerError::Timeout(self.timeout.as_secs())),
            Waited::Exited(status) => self
                .outcome(status, stderr.trim())
                .map(|()| said.trim() == CACHE_HIT),
        }
    }

    /// Waits for the child, ending it at the timeout. The child is polled (std has no
    /// wait with a timeout), first often, then every 20 ms: a small compile returns in
    /// a few ms.
    fn wait(&self, child: &mut Child) -> Result<Waited, WorkerError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Waited::Exited(status)),
                Ok(None) => {}
                Err(e) => return Err(WorkerError::Failed(format!("cannot wait: {e}"))),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Waited::TimedOut);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn outcome(&self, status: ExitStatus, stderr: &str) -> Result<(), WorkerError> {
        use std::os::unix::process::ExitStatusExt as _;
        const SIGXCPU: i32 = 24;
        if status.success() {
            return Ok(());
        }
        // The data limit shows as Rust's allocation failure (then an abort), or as an
        // mmap of the compiler's that failed with ENOMEM (then a compile error): the
        // child's own words are all there is to tell them by.
        let out_of_memory =
            stderr.contains("memory allocation of") || stderr.contains("(os error 12)");
        match (status.code(), status.signal()) {
            _ if out_of_memory => Err(WorkerError::Memory(self.memory_mb)),
            (Some(EXIT_INVALID), _) => Err(WorkerError::Invalid(stderr.to_owned())),
            // The soft limit's SIGXCPU ends the worker (it does not handle it).
            (_, Some(SIGXCPU)) => Err(WorkerError::CpuTime(self.cpu_secs)),
            _ => Err(WorkerError::Failed(format!("{status}: {stderr}"))),
        }
    }
}

enum Waited {
    Exited(ExitStatus),
    TimedOut,
}

/// The worker's first step: limits its own CPU time and data size (heap and writable
/// private mappings, not the address space an engine reserves: a limit on that would
/// refuse the engine itself).
pub(super) fn limit_this_process(cpu_secs: u64, memory_mb: u64) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, Signal, setrlimit};
    // A worker never outlives the service (a kill -9 of it included): an orphan would
    // write into the cache of the next service's compiles.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| format!("cannot tie the worker to the service: {e}"))?;
    if rustix::process::getppid().is_none_or(|parent| parent.as_raw_nonzero().get() == 1) {
        return Err("the service is gone".to_owned());
    }
    let data = memory_mb.saturating_mul(1024 * 1024);
    let limits = [
        (Resource::Cpu, cpu_secs, cpu_secs.saturating_add(1)),
        (Resource::Data, data, data),
    ];
    for (resource, soft, hard) in limits {
        let limit = Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        };
        setrlimit(resource, limit)
            .map_err(|e| format!("cannot set the compile's limit {resource:?}: {e}"))?;
    }
    Ok(())
}

/// What the worker reads on stdin: the service's settings as a JSON line, then the
/// component.
pub(super) fn read_request() -> Result<(ServiceConfig, Vec<u8>), String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read the component: {e}"))?;
    let newline = input
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no settings line on stdin")?;
    let settings =
        serde_json::from_slice(&input[..newline]).map_err(|e| format!("bad settings: {e}"))?;
    input.drain(..=newline);
    Ok((settings, input))
}
