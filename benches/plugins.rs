//! What one plugin call costs, Rust and Go, as the operator makes it (a fresh instance per
//! call: instantiate, `_initialize` if exported, alloc + write the input, `evaluate`), beside
//! the limit measured in the same run: the same module on one reused instance (no
//! instantiation, no start), which the operator does not do because a call must not see the
//! previous one. Also the compile of each. `cargo bench --bench plugins` (release); needs
//! `plugins/build`. Results go to docs/benchmarks.md.

#[path = "common/timing.rs"]
mod timing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use timing::{micros, time};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use workerpool_operator::hooks::abi::{self, CallLimits, Entry};
use workerpool_operator::hooks::{HostLimits, WasmHost};

const CALLS: usize = 500;

fn plugin(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run plugins/build)", path.display()))
}

/// The `evaluate` input of a 4 KB run Pod, as the pipeline encodes it.
fn input() -> Vec<u8> {
    let containers: Vec<_> = ["init", "launcher-grpc", "worker"]
        .iter()
        .map(|name| {
            serde_json::json!({
                "name": name, "image": "public.ecr.aws/spacelift/runner-terraform:1.5",
                "env": (0..18).map(|j| serde_json::json!({"name": format!("VAR_{j}"), "value": "x".repeat(32)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "abi": 1,
        "settings": {"containers": "worker"},
        "context": {
            "pool": {"name": "bench", "namespace": "default", "ulid": "01HN37WC3MCNE3CY9HAHWRF06K", "labels": {}},
            "worker": {"name": "bench-1", "ulid": "01HN37WC3MCNE3CY9HAHWRF06M"},
            "run": {"runId": "01HN37WC3MCNE3CY9HAHWRF06N", "stage": "planning", "attempt": 1},
        },
        "pod": {"metadata": {"name": "r-planning-1", "labels": {}}, "spec": {"containers": containers}},
        "runnerImage": "public.ecr.aws/spacelift/runner-terraform:1.5",
        "allowedRunnerImageHosts": ["public.ecr.aws"],
    }))
    .unwrap()
}

/// The limit: `evaluate` again and again on one instance that ran `_initialize` once.
fn reused_instance(bytes: &[u8], doc: &[u8]) -> (Duration, Duration) {
    let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
    let module = Module::new(&engine, bytes).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let mut store = Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate(&mut store, &module).unwrap();
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        init.call(&mut store, ()).unwrap();
    }
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let alloc = instance
        .get_typed_func::<i32, i32>(&mut store, "alloc")
        .unwrap();
    let evaluate = instance
        .get_typed_func::<(i32, i32), i64>(&mut store, "evaluate")
        .unwrap();
    time(CALLS, || {
        let ptr = alloc.call(&mut store, doc.len() as i32).unwrap();
        memory.write(&mut store, ptr as usize, doc).unwrap();
        evaluate.call(&mut store, (ptr, doc.len() as i32)).unwrap();
    })
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let doc = input();
    println!("input: {} bytes; {CALLS} calls each", doc.len());
    let limits = CallLimits {
        timeout: Duration::from_secs(1),
        memory_limit_bytes: 64 << 20,
        max_output_bytes: 1 << 20,
        max_stdio_bytes: 16 << 10,
    };
    for (name, language) in [("deny-latest", "Rust"), ("deny-latest-go", "Go")] {
        let bytes = plugin(name);
        let host = WasmHost::new(HostLimits {
            compile_timeout: Duration::from_secs(600),
            ..HostLimits::default()
        })
        .unwrap();
        let started = Instant::now();
        let module = host.compile(&bytes).unwrap();
        let compile = started.elapsed();
        let (p50, p99) = time(CALLS, || {
            abi::call(&host, &module, Entry::Evaluate, &doc, &limits).unwrap();
        });
        println!(
            "{language:4} {name:15} fresh instance per call:    p50 {:>7.1} µs  p99 {:>7.1} µs  compile {:>6.0} ms",
            micros(p50),
            micros(p99),
            compile.as_secs_f64() * 1e3
        );
        let (p50, p99) = reused_instance(&bytes, &doc);
        println!(
            "{language:4} {name:15} limit, one reused instance: p50 {:>7.1} µs  p99 {:>7.1} µs",
            micros(p50),
            micros(p99)
        );
    }
}
