//! The process-wide wasmtime engine: pooling allocator (probed, with fallback),
//! epoch interruption driven by a ticker thread, Cranelift tuned for speed, and the
//! on-disk content-addressed compilation cache. Also the linker with the whole WASI
//! 0.2 surface. Compiles run in a worker process when one is set
//! (`runtime::compile_worker`). Depends on `config` and `runtime::host`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel,
    PoolingAllocationConfig,
};

use super::RuntimeError;
use super::compile_worker::{CompileWorker, WorkerError};
use super::host::HostState;
use crate::config::Config as ServiceConfig;
use crate::model::AccountId;

/// Core instances a component may hold: wasi adapters and language runtimes add a few.
const CORE_INSTANCES_PER_COMPONENT: u32 = 20;
/// Memories/tables per component (the adapter brings its own).
const MEMORIES_PER_COMPONENT: u32 = 4;

/// A component linked against the host, ready to instantiate.
pub type Prelinked = InstancePre<HostState>;

/// The engine, its linker and the epoch ticker.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<HostState>,
    pooling: bool,
    cache: Cache,
    cache_dir: PathBuf,
    /// Compiles run one at a time (Cranelift already uses every core) so that the
    /// cache files a compile creates can be attributed to its component.
    compile_lock: Mutex<()>,
    /// Where compiles run: in a limited child process, or (none) in this one.
    worker: Option<CompileWorker>,
    /// The settings the engine was built with (a worker builds the same engine).
    settings: ServiceConfig,
    /// Compiles served from the cache, and compiles that ran Cranelift (here or in a
    /// worker).
    hits: AtomicUsize,
    misses: AtomicUsize,
    epoch_tick: Duration,
    ticker_stop: Arc<AtomicBool>,
    /// Each account's share of concurrent requests, over all its lambdas.
    account_shares: Mutex<HashMap<AccountId, Arc<Semaphore>>>,
    per_account: usize,
    /// MiB the running instances may reserve together (one permit a MiB).
    instance_memory: Arc<Semaphore>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("pooling", &self.pooling)
            .field("epoch_tick", &self.epoch_tick)
            .finish_non_exhaustive()
    }
}

fn base_config(cache: &Cache, settings: &ServiceConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Copy-on-write memory images make each fresh instance cheap to create.
    config.memory_init_cow(settings.engine.memory_init_cow);
    config.cache(Some(cache.clone()));
    // Deep recursion traps at this depth instead of overflowing the host thread; the
    // fiber stack keeps headroom above it for host calls made from the guest.
    config.max_wasm_stack(settings.engine.max_wasm_stack_bytes);
    config.async_stack_size(settings.engine.max_wasm_stack_bytes + ASYNC_STACK_HEADROOM);
    config
}

/// The wasmtime engine of `settings` with its compilation cache in `cache_dir`, and
/// whether it pools instances: the service's and, identical, a compile worker's (equal
/// settings give equal cache keys, so the service loads what the worker compiled).
fn build_engine(
    settings: &ServiceConfig,
    cache_dir: &Path,
) -> Result<(Engine, Cache, bool), RuntimeError> {
    let mut cache_config = CacheConfig::new();
    cache_config.with_directory(cache_dir);
    let cache = Cache::new(cache_config).map_err(|e| RuntimeError::Engine(e.to_string()))?;
    let max_memory = u64::from(settings.sandbox.max_memory_limit_mb) * 1024 * 1024;
    let mut pooling = false;
    let mut engine = None;
    if settings.engine.pooling {
        let n = settings.engine.pool_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
            .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
            .total_tables(n.saturating_mul(MEMORIES_PER_COMPONENT))
            .total_stacks(n)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MEMORIES_PER_COMPONENT)
            .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
            .decommit_batch_size(settings.engine.decommit_batch_size.max(1))
            .linear_memory_keep_resident(settings.engine.memory_keep_resident_kb * 1024)
            .table_keep_resident(settings.engine.table_keep_resident_kb * 1024)
            .pagemap_scan(if settings.engine.pagemap_scan {
                Enabled::Auto
            } else {
                Enabled::No
            });
        let mut config = base_config(&cache, settings);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(e) => {
                pooling = true;
                engine = Some(e);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "pooling allocator unavailable on this host; using on-demand allocation"
            ),
        }
    }
    let engine = match engine {
        Some(e) => e,
        None => Engine::new(&base_config(&cache, settings))
            .map_err(|e| RuntimeError::Engine(e.to_string()))?,
    };
    Ok((engine, cache, pooling))
}

/// The compile worker's process (`luna-lambda compile-worker --cache-dir D --cpu-secs N
/// --memory-mb M`): limits itself, reads the service's settings and a component on
/// stdin, and compiles it with the service's engine configuration into the cache at
/// `cache_dir`. Returns the exit status.
pub fn run_compile_worker(cache_dir: &Path, cpu_secs: u64, memory_mb: u64) -> i32 {
    use super::compile_worker::{
        CACHE_HIT, COMPILED, EXIT_BROKEN, EXIT_INVALID, limit_this_process, read_request,
    };
    let prepared = limit_this_process(cpu_secs, memory_mb).and_then(|()| read_request());
    let (settings, wasm) = match prepared {
        Ok(request) => request,
        Err(reason) => {
            eprintln!("{reason}");
            return EXIT_BROKEN;
        }
    };
    let (engine, cache) = match build_engine(&settings, cache_dir) {
        Ok((engine, cache, _)) => (engine, cache),
        Err(e) => {
            eprintln!("{e}");
            return EXIT_BROKEN;
        }
    };
    match Component::new(&engine, &wasm) {
        Ok(_) => {
            println!(
                "{}",
                if cache.cache_hits() > 0 {
                    CACHE_HIT
                } else {
                    COMPILED
                }
            );
            0
        }
        Err(e) => {
            eprint!("{e:#}");
            EXIT_INVALID
        }
    }
}

/// Fiber stack above the guest's own maximum, for the host functions it calls.
const ASYNC_STACK_HEADROOM: usize = 1024 * 1024;

impl WasmEngine {
    /// Builds the engine; compiles run in this process. With `engine.pooling` the
    /// pooling allocator is tried first and the on-demand allocator used if the host
    /// cannot reserve the pool.
    pub fn new(settings: &ServiceConfig, cache_dir: &Path) -> Result<Arc<Self>, RuntimeError> {
        Self::with_compile_worker(settings, cache_dir, None)
    }

    /// Builds the engine; compiles run in `worker`'s child processes when one is given.
    pub fn with_compile_worker(
        settings: &ServiceConfig,
        cache_dir: &Path,
        worker: Option<CompileWorker>,
    ) -> Result<Arc<Self>, RuntimeError> {
        let (engine, cache, pooling) = build_engine(settings, cache_dir)?;
        let mut linker = Linker::new(&engine);
        // The whole WASI 0.2 surface: toolchains import cli/filesystem/sockets even for
        // pure HTTP handlers. The context denies what the sandbox does not allow.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        // The luna imports: config, key-value, logging, context.
        super::guest::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let epoch_tick = Duration::from_millis(settings.engine.epoch_tick_ms);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.weak(), epoch_tick, ticker_stop.clone())?;
        tracing::info!(
            pooling,
            tick_ms = settings.engine.epoch_tick_ms,
            "wasm engine ready"
        );
        Ok(Arc::new(Self {
            engine,
            linker,
            pooling,
            cache,
            cache_dir: cache_dir.to_owned(),
            compile_lock: Mutex::new(()),
            worker,
            settings: settings.clone(),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            epoch_tick,
            ticker_stop,
            account_shares: Mutex::default(),
            per_account: usize::try_from(settings.sandbox.max_concurrent_per_account)
                .unwrap_or(usize::MAX),
            instance_memory: Arc::new(Semaphore::new(instance_memory_mb(
                settings.engine.max_instance_memory_mb,
            ))),
        }))
    }

    /// The MiB the running instances reserve from (`engine.max_instance_memory_mb`).
    pub fn instance_memory(&self) -> Arc<Semaphore> {
        self.instance_memory.clone()
    }

    /// The semaphore of `account`'s concurrent requests, shared by all its lambdas
    /// (`sandbox.max_concurrent_per_account` permits).
    pub fn account_share(&self, account: AccountId) -> Arc<Semaphore> {
        let mut shares = self
            .account_shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shares
            .entry(account)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_account)))
            .clone()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker every lambda is instantiated with.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// Links a compiled component against the host's imports: the one link a version
    /// gets, checked at build time and then handed to the runtime as it is.
    pub fn prelink(&self, component: &Component) -> Result<Prelinked, RuntimeError> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compilations answered from the on-disk cache (no Cranelift run).
    pub fn cache_hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Compilations that ran Cranelift.
    pub fn cache_misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }

    /// Epoch ticks for a deadline (at least one).
    pub fn ticks_for(&self, deadline: Duration) -> u64 {
        let tick = self.epoch_tick.as_micros().max(1);
        u64::try_from(deadline.as_micros().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Compiles a component, or loads it from the on-disk cache. Blocking. Reports
    /// whether it was a cache hit and which cache files the compile created.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, RuntimeError> {
        let _one_at_a_time = self
            .compile_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = self.cache_files();
        let hits = self.cache.cache_hits();
        // The worker compiles into the cache (or finds it there); loading it here is
        // then a cache hit, with no Cranelift run in this process.
        let worker_hit = match &self.worker {
            Some(worker) => Some(
                worker
                    .compile(&self.settings, &self.cache_dir, wasm)
                    .map_err(|e| match e {
                        WorkerError::Invalid(reason) => RuntimeError::Compile(reason),
                        other => RuntimeError::CompileWorker(other),
                    })?,
            ),
            None => None,
        };
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        let loaded_here = self.cache.cache_hits() > hits;
        if self.worker.is_some() && !loaded_here {
            tracing::error!(
                "the compile worker's artifact was not found in the cache: compiled in the service"
            );
        }
        let mut artifacts: Vec<String> = self.cache_files().difference(&before).cloned().collect();
        artifacts.sort();
        // With a worker this process always loads from the cache: whether Cranelift ran
        // is the worker's to say.
        let cache_hit = loaded_here && worker_hit.unwrap_or(true);
        let counter = if cache_hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Compiled {
            component,
            cache_hit,
            artifacts,
        })
    }

    /// Cache entries (paths relative to the cache directory), without worker stats files.
    fn cache_files(&self) -> HashSet<String> {
        let mut files = HashSet::new();
        let modules = self.cache_dir.join("modules");
        let Ok(dirs) = std::fs::read_dir(&modules) else {
            return files;
        };
        for dir in dirs.flatten() {
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".stats") && !name.starts_with('.') {
                    files.insert(format!(
                        "modules/{}/{name}",
                        dir.file_name().to_string_lossy()
                    ));
                }
            }
        }
        files
    }

    /// Size of a cache entry, if present.
    pub fn artifact_size(&self, relative: &str) -> Option<u64> {
        self.artifact_path(relative)
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
    }

    /// Deletes cache entries (and their stats files) no lambda uses any more.
    pub fn remove_artifacts(&self, relative: &[String]) {
        for rel in relative {
            if let Some(path) = self.artifact_path(rel) {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("stats"));
            }
        }
    }

    /// Only plain paths inside the cache directory are ever touched.
    fn artifact_path(&self, relative: &str) -> Option<PathBuf> {
        let plain = Path::new(relative)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        plain.then(|| self.cache_dir.join(relative))
    }
}

/// The outcome of [`WasmEngine::compile`].
#[derive(Debug)]
pub struct Compiled {
    /// The component, ready to link.
    pub component: Component,
    /// Loaded from the on-disk cache: no Cranelift run.
    pub cache_hit: bool,
    /// Cache files this compile created (relative to the cache directory).
    pub artifacts: Vec<String>,
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_epoch_ticker(
    engine: wasmtime::EngineWeak,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    // A plain thread: ticking must go on even when every tokio worker is busy running guests.
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Engine(format!("epoch ticker: {e}")))
}

/// `configured` MiB, or half of the machine's memory when 0 (read from /proc/meminfo;
/// 4 GiB when it cannot be read), within what a semaphore holds.
fn instance_memory_mb(configured: u64) -> usize {
    let mb = if configured > 0 {
        configured
    } else {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(4096, |kib| kib / 1024 / 2)
    };
    usize::try_from(mb)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}
