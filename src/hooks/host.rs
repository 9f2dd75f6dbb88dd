//! The WASM host: one wasmtime engine for the process, an epoch ticker that enforces call
//! deadlines, and a cache of compiled modules keyed by their sha256 digest.
//!
//! Modeled on kubewarden's policy-server: the engine is built once, modules are compiled once
//! and pre-linked into an [`InstancePre`], and every call gets a fresh [`Store`] (see
//! [`super::abi`]).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, OptLevel, ValType};

use super::compile::{CompileQueue, CompileWait};
use super::wasi::{self, CallState};

/// Limits that apply to every plugin unless its spec overrides them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Deadline of one call (instantiation, `_initialize` and the export together).
    pub timeout: Duration,
    /// Linear-memory cap of one call.
    pub memory_limit_bytes: usize,
    /// Largest output a plugin may return from `evaluate` or `validate_settings`.
    pub max_output_bytes: usize,
    /// Largest module accepted (after gzip decompression).
    pub max_module_bytes: usize,
    /// How long one compile may take (waiting for a compile slot included).
    pub compile_timeout: Duration,
    /// Compiles at once in the process (one core each).
    pub max_concurrent_compiles: usize,
    /// How much of the plugin's stdout and stderr is kept (each); the rest is dropped.
    pub max_stdio_bytes: usize,
    /// Epoch tick: the granularity of deadlines. A call overruns its deadline by at most this.
    pub epoch_tick: Duration,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory_limit_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
            max_module_bytes: 16 << 20,
            compile_timeout: Duration::from_secs(60),
            max_concurrent_compiles: 2,
            max_stdio_bytes: 16 << 10,
            epoch_tick: Duration::from_millis(2),
        }
    }
}

/// The on-disk cache of compiled modules: where, and how large it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileCache {
    pub dir: PathBuf,
    /// Soft limit of the compiled modules' total size (file lengths). Cleaned up after every
    /// write, down to 70% of this, oldest first; between two cleanups it is exceeded by at most
    /// the module just written.
    pub max_bytes: u64,
}

impl CompileCache {
    /// At most one cached module per this many bytes of `max_bytes`. The size limit counts
    /// file lengths only, while each module also has a `.stats` file and rounds up to whole
    /// blocks (up to 8 KiB more on disk): the count bounds that to 1/32 of the size limit.
    const BYTES_PER_FILE: u64 = 256 << 10;

    /// A cache in `dir` of at most `max_mib` MiB.
    pub fn new(dir: impl Into<PathBuf>, max_mib: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: max_mib.saturating_mul(1 << 20),
        }
    }

    /// Soft limit of the number of compiled modules.
    pub fn max_files(&self) -> u64 {
        (self.max_bytes / Self::BYTES_PER_FILE).max(4)
    }

    fn wasmtime_config(&self) -> wasmtime::CacheConfig {
        let mut config = wasmtime::CacheConfig::new();
        config
            .with_directory(&self.dir)
            .with_files_total_size_soft_limit(self.max_bytes)
            .with_file_count_soft_limit(self.max_files())
            // Clean up after every write. Wasmtime's default is at most once an hour, and in
            // fact once per process: the cleanup lock (`.cleanup.wip-<pid>`) outlives its
            // cleanup until it expires, and an expired lock of the same pid blocks creating a
            // new one. With a zero interval each cleanup finds its own lock expired and removes
            // it. A cleanup lists a few hundred files at most, after a compile of seconds.
            .with_cleanup_interval(Duration::ZERO);
        config
    }
}

/// Why a module could not be compiled or linked. The caller adds the plugin's name.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error(
        "the module is {size} bytes, more than the {} MiB a plugin module may have (limits.maxModuleMib, Helm value hooks.limits.maxModuleMib): build a smaller module, or raise the limit",
        limit >> 20
    )]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Slow(#[source] CompileWait),
    #[error("the module is not valid WebAssembly: {0}")]
    Compile(String),
    #[error(
        "the module imports {imports}, which the host does not provide (plugins may import only \
         the WASI preview1 functions listed in docs/plugins.md, from `wasi_snapshot_preview1`)"
    )]
    UnsupportedImports { imports: String },
    #[error("the module does not follow the workerpool plugin ABI: {problems}")]
    Abi { problems: String },
    #[error("the module could not be linked: {0}")]
    Link(String),
}

/// A compiled, pre-linked module, shared by every plugin whose bytes have the same digest.
pub struct CompiledModule {
    pub(super) digest: Digest,
    pub(super) size: usize,
    pub(super) instance_pre: InstancePre<CallState>,
    pub(super) has_initialize: bool,
    pub(super) compile_time: Duration,
    pub(super) exports: Vec<String>,
    pub(super) imports: Vec<String>,
}

impl CompiledModule {
    /// sha256 of the module bytes (after decompression).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// How long compilation took (zero when the module came from the cache).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
    /// Names of the module's exports, in module order.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
    /// The module's imports as `module::name`, in module order.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

impl fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &self.digest.to_string())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// sha256 of a module.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The process-wide WASM host. Cheap to share behind an `Arc`; dropping the last `Arc` stops
/// the epoch ticker.
pub struct WasmHost {
    engine: Engine,
    linker: Linker<CallState>,
    limits: HostLimits,
    cache: Mutex<HashMap<Digest, Weak<CompiledModule>>>,
    compiles: CompileQueue,
    /// Modules this host has compiled (not found in its cache).
    compiled: AtomicU64,
    ticker: Option<EpochTicker>,
}

impl fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmHost")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The host could not be created (the engine refused its configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the WASM host: {0}")]
pub struct HostError(String);

impl WasmHost {
    pub fn new(limits: HostLimits) -> Result<Arc<Self>, HostError> {
        Self::with_compile_cache(limits, None)
    }

    /// A host that also keeps compiled modules on disk in `cache`, keyed by module and engine
    /// settings, so that a restarted operator loads its plugins instead of compiling them again
    /// (seconds per plugin, see docs/plugins.md).
    pub fn with_compile_cache(
        limits: HostLimits,
        cache: Option<&CompileCache>,
    ) -> Result<Arc<Self>, HostError> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Deep recursion in a plugin traps instead of exhausting the host thread's stack.
            .max_wasm_stack(1 << 20)
            // One compile, one core: the compile queue's slots then bound the CPU compiles
            // take, and a tenant's module never takes every core from the other pools' runs.
            .parallel_compilation(false);
        if let Some(cache) = cache {
            let wasmtime_cache = wasmtime::Cache::new(cache.wasmtime_config())
                .map_err(|e| HostError(format!("compile cache in {}: {e}", cache.dir.display())))?;
            config.cache(Some(wasmtime_cache));
        }
        let engine = Engine::new(&config).map_err(|e| HostError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| HostError(e.to_string()))?;
        let ticker = EpochTicker::start(engine.clone(), limits.epoch_tick);
        let compiles = CompileQueue::new(limits.max_concurrent_compiles, limits.compile_timeout);
        Ok(Arc::new(Self {
            engine,
            linker,
            compiles,
            compiled: AtomicU64::new(0),
            limits,
            cache: Mutex::new(HashMap::new()),
            ticker: Some(ticker),
        }))
    }

    /// How many modules this host has compiled, valid or not (cache hits not counted).
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> &HostLimits {
        &self.limits
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Number of epoch ticks that cover `timeout`, plus one for the tick already under way.
    pub(super) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.limits.epoch_tick.as_nanos().max(1);
        u64::try_from(timeout.as_nanos().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Compiles `bytes` (or returns the cached module with the same digest) and checks that it
    /// imports only what the host provides and exports the plugin ABI.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<CompiledModule>, ModuleError> {
        self.compile_for("", bytes.to_vec())
    }

    /// [`WasmHost::compile`] for `scope` (a pool, or the cluster-wide hooks): through the
    /// compile queue, at most one compile of a scope at a time, bounded in time. Takes the
    /// bytes, which the compile thread owns until it ends.
    pub fn compile_for(
        &self,
        scope: &str,
        bytes: Vec<u8>,
    ) -> Result<Arc<CompiledModule>, ModuleError> {
        if bytes.len() > self.limits.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_module_bytes,
            });
        }
        let digest = Digest::of(&bytes);
        if let Some(module) = self.cached(&digest) {
            return Ok(module);
        }
        // Not under the cache's lock: a slow compile must not hold up every other load.
        let started = Instant::now();
        let engine = self.engine.clone();
        let size = bytes.len();
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let module = self
            .compiles
            .run(scope, move || Module::new(&engine, &bytes))
            .map_err(ModuleError::Slow)?
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        let compiled = Arc::new(self.link(module, digest, size, started)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = cache.get(&digest).and_then(Weak::upgrade) {
            return Ok(module);
        }
        cache.retain(|_, weak| weak.strong_count() > 0);
        cache.insert(digest, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    fn cached(&self, digest: &Digest) -> Option<Arc<CompiledModule>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(digest).and_then(Weak::upgrade)
    }

    fn link(
        &self,
        module: Module,
        digest: Digest,
        size: usize,
        started: Instant,
    ) -> Result<CompiledModule, ModuleError> {
        let unsupported: Vec<String> = module
            .imports()
            .filter(|import| {
                !(import.module() == wasi::MODULE
                    && matches!(import.ty(), ExternType::Func(_))
                    && wasi::provides(import.name()))
            })
            .map(|import| format!("`{}::{}`", import.module(), import.name()))
            .collect();
        if !unsupported.is_empty() {
            return Err(ModuleError::UnsupportedImports {
                imports: unsupported.join(", "),
            });
        }
        let (exports, has_initialize) = check_abi_exports(&module)?;
        let imports = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        let instance_pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Link(format!("{e:#}")))?;
        Ok(CompiledModule {
            digest,
            size,
            instance_pre,
            has_initialize,
            compile_time: started.elapsed(),
            exports,
            imports,
        })
    }
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

/// Checks the ABI exports; returns every export name and whether `_initialize` is present.
fn check_abi_exports(module: &Module) -> Result<(Vec<String>, bool), ModuleError> {
    use ValType::{I32, I64};
    let expected: [(&str, &[ValType], &[ValType]); 4] = [
        (super::abi::ABI_MARKER, &[], &[]),
        ("alloc", &[I32], &[I32]),
        ("validate_settings", &[I32, I32], &[I64]),
        ("evaluate", &[I32, I32], &[I64]),
    ];
    let mut problems = Vec::new();
    let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
    match module.get_export("memory") {
        Some(ExternType::Memory(memory)) if !memory.is_64() => {}
        Some(_) => problems.push("`memory` must be a 32-bit linear memory".to_string()),
        None => problems.push("missing export `memory`".to_string()),
    }
    for (name, params, results) in expected {
        match module.get_export(name) {
            Some(ExternType::Func(ty)) => {
                let got_params: Vec<ValType> = ty.params().collect();
                let got_results: Vec<ValType> = ty.results().collect();
                if !same_types(&got_params, params) || !same_types(&got_results, results) {
                    problems.push(format!(
                        "export `{name}` has type {} but the ABI needs {}",
                        signature(&got_params, &got_results),
                        signature(params, results)
                    ));
                }
            }
            Some(_) => problems.push(format!("export `{name}` must be a function")),
            None => problems.push(format!("missing export `{name}`")),
        }
    }
    let has_initialize = match module.get_export("_initialize") {
        Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => true,
        Some(_) => {
            problems.push(
                "export `_initialize` must be a function with no parameters and no results".into(),
            );
            false
        }
        None => false,
    };
    if problems.is_empty() {
        Ok((exports, has_initialize))
    } else {
        Err(ModuleError::Abi {
            problems: problems.join("; "),
        })
    }
}

fn same_types(a: &[ValType], b: &[ValType]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y))
}

fn signature(params: &[ValType], results: &[ValType]) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

/// A thread that advances the engine's epoch every tick. Calls set their deadline in ticks.
struct EpochTicker {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // The sender is dropped (or sends) when the host goes away.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the WASM epoch thread: {e}"));
        Self { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Arc<WasmHost> {
        WasmHost::new(HostLimits::default()).expect("host")
    }

    const MINIMAL: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "workerpool_abi_v1"))
        (func (export "alloc") (param i32) (result i32) i32.const 1024)
        (func (export "validate_settings") (param i32 i32) (result i64) i64.const 0)
        (func (export "evaluate") (param i32 i32) (result i64) i64.const 0))"#;

    #[test]
    fn the_same_bytes_are_compiled_once() {
        let host = host();
        let bytes = MINIMAL.as_bytes().to_vec();
        let a = host.compile(&bytes).unwrap();
        let b = host.compile(&bytes).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.digest().to_string().starts_with("sha256:"));
    }

    /// The compiled artifacts in a compile cache (not its bookkeeping files).
    fn artifacts(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .flat_map(|e| {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    artifacts(&path)
                } else if name.contains('.') {
                    // Bookkeeping: `.stats`, `.wip-*` temporaries, `.cleanup` markers.
                    Vec::new()
                } else {
                    let modified = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    vec![(path, modified)]
                }
            })
            .collect()
    }

    #[test]
    fn a_compile_cache_keeps_compiled_modules_on_disk_for_the_next_host() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = MINIMAL.as_bytes().to_vec();
        let cache = CompileCache::new(dir.path(), 64);
        let first = WasmHost::with_compile_cache(HostLimits::default(), Some(&cache)).unwrap();
        first.compile(&bytes).unwrap();
        let stored = artifacts(dir.path());
        assert_eq!(
            stored.len(),
            1,
            "one compiled module in the cache: {stored:?}"
        );
        // A new host (a restarted operator) with the same directory loads it from there.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = WasmHost::with_compile_cache(HostLimits::default(), Some(&cache)).unwrap();
        second.compile(&bytes).unwrap();
        assert_eq!(
            artifacts(dir.path()),
            stored,
            "the second host compiled and stored it again"
        );
    }

    #[test]
    fn the_compile_cache_is_cleaned_up_to_its_limits_after_every_write() {
        let dir = tempfile::tempdir().unwrap();
        // Each of these modules compiles to a few KiB: 40 KB hold a few of them, and the file
        // count limit is its minimum of 4.
        let cache = CompileCache {
            dir: dir.path().to_path_buf(),
            max_bytes: 40_000,
        };
        assert_eq!(cache.max_files(), 4);
        let host = WasmHost::with_compile_cache(HostLimits::default(), Some(&cache)).unwrap();
        let module = |i: usize| MINIMAL.replace("i64.const 0))", &format!("i64.const {i}))"));
        let mut modules = Vec::new();
        for i in 0..12 {
            modules.push(host.compile(module(i).as_bytes()).unwrap());
        }
        // Wasmtime cleans up on a thread of its own: wait for the cleanup after the last write.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stored = artifacts(dir.path());
            let size: u64 = stored
                .iter()
                .map(|(path, _)| std::fs::metadata(path).map_or(0, |m| m.len()))
                .sum();
            if stored.len() as u64 <= cache.max_files() && size <= cache.max_bytes {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cache holds {} modules, {size} bytes: {stored:?}",
                stored.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn the_compile_cache_limits_follow_its_size() {
        let cache = CompileCache::new("/cache", 192);
        assert_eq!(cache.max_bytes, 192 << 20);
        assert_eq!(cache.max_files(), 768);
    }

    #[test]
    fn missing_exports_are_listed_together() {
        let bytes = r#"(module (func (export "evaluate") (param i32) (result i64) i64.const 0))"#
            .as_bytes()
            .to_vec();
        let err = host().compile(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the module does not follow the workerpool plugin ABI: missing export `memory`; \
             missing export `workerpool_abi_v1`; missing export `alloc`; missing export \
             `validate_settings`; export `evaluate` has type (i32) -> (i64) but the ABI needs \
             (i32, i32) -> (i64)"
        );
    }

    #[test]
    fn imports_outside_wasi_are_refused_by_name() {
        let wat = r#"(module
            (import "env" "launch_missiles" (func (param i32)))
            (import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32))))"#;
        let bytes = wat.as_bytes().to_vec();
        let err = host().compile(&bytes).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the module imports `env::launch_missiles`, `wasi_snapshot_preview1::sock_open`, \
                 which the host does not provide"
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_webassembly() {
        let err = host().compile(b"not wasm").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the module is not valid WebAssembly: "),
            "{err}"
        );
    }

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        let host = host();
        assert_eq!(host.deadline_ticks(Duration::from_millis(100)), 51);
        assert_eq!(host.deadline_ticks(Duration::from_millis(1)), 2);
    }
}
