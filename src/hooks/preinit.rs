//! Pre-initialization: a plugin's `_initialize` (the Go runtime's start, a Rust reactor's
//! constructors) runs once, when the plugin is loaded, and the module is compiled again as it
//! is after it: wasmtime-wizer's snapshot of its memory and globals, with `_initialize` gone.
//! Every call still gets a fresh instance, of the snapshot, whose memory is mapped
//! copy-on-write from the compiled image; it only no longer pays for the start (issue 14:
//! a Go plugin's call went from about 1.5 ms to the cost of the call itself).
//!
//! What a snapshot freezes is what `_initialize` computed: a Go runtime's hash seeds and its
//! clock at start are the same in every call of that load. Calls still read the clock and
//! the random source afresh.
//!
//! A module that cannot be snapshot (wizer refuses it, or its `_initialize` fails under the
//! call limits) is used as it is: each call runs `_initialize`, as before, and a failing
//! `_initialize` is then reported by the first call (`validate_settings` at load).

use std::time::Instant;

use futures::FutureExt as _;
use wasmtime::{Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::abi::{self, CallLimits};
use super::host::{CompiledModule, Digest, ModuleError, WasmHost};
use super::wasi::CallState;

/// Compiles `bytes` pre-initialized (see the module docs): two compiles, of the instrumented
/// module and of its snapshot, each through the compile queue.
pub(super) fn compile(
    host: &WasmHost,
    scope: &str,
    bytes: Vec<u8>,
    digest: Digest,
    started: Instant,
) -> Result<CompiledModule, ModuleError> {
    let size = bytes.len();
    let wizer = wizer();
    let (cx, instrumented) = match wizer.instrument(&bytes) {
        Ok(instrumented) => instrumented,
        // Not a module wizer takes (its validation, or what it imports): compiled as it is,
        // and the compile or the link says what is wrong with it, if anything.
        Err(err) => {
            tracing::debug!(error = %format!("{err:#}"), "plugin not pre-initialized");
            return compile_plain(host, scope, bytes, digest, started);
        }
    };
    let module = host.compile_bytes(scope, instrumented)?;
    let plain = host.link(module, digest, size, started)?;
    if !plain.has_initialize {
        return Ok(plain);
    }
    let snapshot = match initialize_and_snapshot(host, &wizer, &cx, &plain) {
        Ok(snapshot) => snapshot,
        Err(why) => {
            tracing::info!(digest = %digest, reason = %why, "plugin not pre-initialized: each call runs its _initialize");
            return Ok(plain);
        }
    };
    let module = host.compile_bytes(scope, snapshot)?;
    let mut compiled = host.link(module, digest, size, started)?;
    compiled.preinitialized = true;
    // What the plugin's author wrote, `_initialize` included, not what the snapshot kept.
    compiled.exports = plain.exports;
    Ok(compiled)
}

/// Compiles `bytes` as they are: each call runs the module's `_initialize`, if it has one.
pub(super) fn compile_plain(
    host: &WasmHost,
    scope: &str,
    bytes: Vec<u8>,
    digest: Digest,
    started: Instant,
) -> Result<CompiledModule, ModuleError> {
    let size = bytes.len();
    let module: Module = host.compile_bytes(scope, bytes)?;
    host.link(module, digest, size, started)
}

fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    wizer.init_func("_initialize").keep_init_func(false);
    wizer
}

/// Runs `_initialize` in an instance of the instrumented module, under the host's call limits,
/// and returns the module as that instance is after it.
fn initialize_and_snapshot(
    host: &WasmHost,
    wizer: &Wizer,
    cx: &wasmtime_wizer::ModuleContext<'_>,
    module: &CompiledModule,
) -> Result<Vec<u8>, String> {
    let limits = host.limits();
    let mut store = abi::store(
        host,
        &CallLimits {
            timeout: limits.timeout,
            memory_limit_bytes: limits.memory_limit_bytes,
            max_output_bytes: limits.max_output_bytes,
            max_stdio_bytes: limits.max_stdio_bytes,
        },
    );
    let instance = module
        .instance_pre
        .instantiate(&mut store)
        .map_err(|e| format!("instantiate: {e:#}"))?;
    instance
        .get_typed_func::<(), ()>(&mut store, "_initialize")
        .and_then(|init| init.call(&mut store, ()))
        .map_err(|e| format!("_initialize: {e:#}"))?;
    let mut state = Initialized {
        store: &mut store,
        instance,
    };
    // Every future of `Initialized` is ready at once: nothing here waits.
    wizer
        .snapshot(cx, &mut state)
        .now_or_never()
        .ok_or("the snapshot did not complete at once")?
        .map_err(|e| format!("snapshot: {e:#}"))
}

/// An instance after its `_initialize`, as wizer reads it.
struct Initialized<'a> {
    store: &'a mut Store<CallState>,
    instance: wasmtime::Instance,
}

impl InstanceState for Initialized<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        // wizer asks only for the globals its instrumentation exported.
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .unwrap_or_else(|| panic!("the instrumented module exports global {name}"));
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("global {name} holds {other:?}, which wizer does not snapshot"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .unwrap_or_else(|| panic!("the instrumented module exports memory {name}"));
        contents(memory.data(&*self.store));
    }
}

/// Whether `name` is an export wizer's instrumentation added (not the plugin's own).
pub(super) fn is_instrumentation(name: &str) -> bool {
    name.starts_with("__wizer_")
}
