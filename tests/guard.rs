//! The run-Pod guard (issue 12, item 4): what the cluster admin allows a run Pod to be,
//! enforced after every hook. Offline through the operator's own pipeline (the seed's pools,
//! a real compiled plugin that widens the Pod, `render`), and on the real control plane.

mod broker;
mod support;

#[path = "e2e/stack.rs"]
mod stack;

#[path = "guard/cluster.rs"]
mod cluster;
#[path = "guard/offline.rs"]
mod offline;
#[path = "guard/pss.rs"]
mod pss;
#[path = "guard/pss_cases.rs"]
mod pss_cases;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use workerpool_operator::crd::WorkerPool;
use workerpool_operator::guard::RunPodGuard;
use workerpool_operator::hooks::host::CompiledModule;
use workerpool_operator::hooks::{
    Decision, HookInput, HostLimits, Pipeline, Plugin, PluginEntry, PluginSpec, WasmHost,
};
use workerpool_operator::protocol::RunSchedule;
use workerpool_operator::{manifest, render};

/// `plugins/target/wasm/<name>.wasm`, built once per test process.
pub fn built_plugin(name: &str) -> PathBuf {
    support::plugins_dir().join(format!("{name}.wasm"))
}

/// The `widen` test plugin as a pool plugin, doing `actions`. Its compiled module stays in the
/// host's cache for the whole process (as the registry keeps it in the operator), so it is
/// compiled once.
pub fn widen(actions: &[&str]) -> PluginEntry {
    static HOST: OnceLock<Arc<WasmHost>> = OnceLock::new();
    static PINNED: OnceLock<Arc<CompiledModule>> = OnceLock::new();
    let host = HOST.get_or_init(|| WasmHost::new(HostLimits::default()).expect("WASM host"));
    let bytes = std::fs::read(built_plugin("widen")).expect("widen.wasm");
    PINNED.get_or_init(|| host.compile(&bytes).expect("widen compiles"));
    let spec = PluginSpec {
        config_map: "widen".into(),
        settings: Some(serde_json::json!({ "do": actions })),
        ..PluginSpec::default()
    };
    let plugin = Plugin::load(host, "widen", &bytes, &spec).expect("widen loads");
    PluginEntry::Ready(Arc::new(plugin))
}

/// A WorkerPool manifest from the repository (`tests/fixtures/...`).
pub fn pool(path: &str) -> WorkerPool {
    manifest::load_workerpool(&support::repo_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn run() -> RunSchedule {
    render::load_run(&support::repo_root().join("tests/fixtures/runs/preparing.json"))
        .expect("the run fixture")
}

/// What the operator decides for `run` on `pool` with `pool_plugins`, under `guard`: the
/// same pipeline as in the operator, on the Pod `build_pod` makes.
pub fn decide(
    pool: &WorkerPool,
    run: &RunSchedule,
    pool_plugins: Vec<PluginEntry>,
    guard: RunPodGuard,
) -> Decision {
    let ids = render::RenderIds {
        pool_ulid: None,
        worker_ulid: render::PLACEHOLDER_WORKER_ULID.into(),
    };
    let worker = render::stand_in_worker(pool, &ids);
    let input = HookInput::build(pool, &worker, run).expect("the run Pod builds");
    Pipeline {
        pool_plugins,
        scope: "test".into(),
        guard: Arc::new(guard),
        ..Pipeline::default()
    }
    .evaluate(input)
}

/// The guard of a configuration file's text.
pub fn guard(yaml: &str) -> RunPodGuard {
    RunPodGuard::parse(yaml, "guard.yaml").expect("the guard configuration parses")
}

/// The denial's reasons; panics if the run was allowed.
pub fn reasons(decision: &Decision) -> Vec<String> {
    match decision {
        Decision::Denied(denial) => denial.reasons.clone(),
        Decision::Allowed(_) => panic!("the run was allowed"),
    }
}
