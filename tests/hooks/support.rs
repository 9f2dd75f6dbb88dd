//! Fixtures for tests/hooks.rs: the seed's pool, a worker and a run, the example plugins
//! (built once per test process by `plugins/build`) and the hostile WAT plugins.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus::{Registry, TextEncoder};
use workerpool_operator::crd::{Worker, WorkerPool};
use workerpool_operator::hooks::host::CompiledModule;
use workerpool_operator::hooks::{
    Allowed, Decision, Denial, FailurePolicy, HookConfig, HookInput, HookMetrics, HookRegistry,
    HostLimits, Pipeline, Plugin, PluginEntry, PluginSpec, PolicyEvaluator, PolicyLimits,
    RegoVersion, WasmHost,
};
use workerpool_operator::protocol::RunSchedule;

pub const SEED_POLICY: &str = "package spacelift\n\ndeny[\"you shall not pass\"] {\n    false\n}\n";

pub use crate::support::plugins_dir;

/// The bytes of a built example plugin. Its compiled module stays in the shared host's cache
/// for the whole test process (as the registry keeps it in the operator), so each example is
/// compiled once, not once per test.
pub fn example(name: &str) -> Vec<u8> {
    static PINNED: Mutex<BTreeMap<String, Arc<CompiledModule>>> = Mutex::new(BTreeMap::new());
    let path = plugins_dir().join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pinned = PINNED.lock().unwrap_or_else(|p| p.into_inner());
    if !pinned.contains_key(name) {
        let module = host()
            .compile(&bytes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        pinned.insert(name.to_string(), module);
    }
    bytes
}

/// The text of a hostile plugin fixture (WAT; wasmtime compiles it as is).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = crate::support::repo_root().join(format!("tests/fixtures/plugins/{name}.wat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One host for the whole test process, as in the operator.
pub fn host() -> Arc<WasmHost> {
    static HOST: OnceLock<Arc<WasmHost>> = OnceLock::new();
    // Tests compile every example at once on a machine shared with other builds: compile
    // limits are tested on hosts of their own (bounds.rs).
    HOST.get_or_init(|| {
        WasmHost::new(HostLimits {
            compile_timeout: Duration::from_secs(1800),
            max_concurrent_compiles: 8,
            ..HostLimits::default()
        })
        .expect("host")
    })
    .clone()
}

/// The operator binary's policy evaluator children, as the operator runs them, with the
/// default limits (100 ms, 32 MiB).
pub fn policies() -> Arc<PolicyEvaluator> {
    static POLICIES: OnceLock<Arc<PolicyEvaluator>> = OnceLock::new();
    POLICIES
        .get_or_init(|| policies_with(PolicyLimits::default()))
        .clone()
}

/// Policy evaluator children of the operator binary with `limits`.
pub fn policies_with(limits: PolicyLimits) -> Arc<PolicyEvaluator> {
    PolicyEvaluator::new(env!("CARGO_BIN_EXE_workerpool-operator"), limits)
}

/// A registry as the operator has it once its cluster-wide hooks have loaded (none here); a
/// pool's own hooks still need `load_pool`.
pub fn registry() -> HookRegistry {
    let registry = unloaded_registry();
    registry.load_cluster(&HookConfig::default(), &BTreeMap::new());
    registry
}

/// A registry that has loaded nothing yet. A run waits at most 300 ms for its hooks.
pub fn unloaded_registry() -> HookRegistry {
    HookRegistry::new(host(), policies(), Arc::new(HookMetrics::new()))
        .with_load_wait(Duration::from_millis(300))
}

pub fn spec(settings: Option<serde_json::Value>, failure_policy: FailurePolicy) -> PluginSpec {
    PluginSpec {
        config_map: "unused".into(),
        settings,
        failure_policy,
        ..PluginSpec::default()
    }
}

pub fn fixture_plugin(name: &str, failure_policy: FailurePolicy) -> PluginEntry {
    let plugin = Plugin::load(&host(), name, &fixture(name), &spec(None, failure_policy))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    PluginEntry::Ready(Arc::new(plugin))
}

pub fn example_plugin(
    name: &str,
    settings: serde_json::Value,
    failure_policy: FailurePolicy,
) -> PluginEntry {
    let plugin = Plugin::load(
        &host(),
        name,
        &example(name),
        &spec(Some(settings), failure_policy),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    PluginEntry::Ready(Arc::new(plugin))
}

pub fn pipeline(cluster: Vec<PluginEntry>, pool: Vec<PluginEntry>) -> Pipeline {
    Pipeline {
        cluster_plugins: cluster,
        pool_plugins: pool,
        scope: "default/test-workerpool".into(),
        metrics: Some(Arc::new(HookMetrics::new())),
        ..Pipeline::default()
    }
}

pub fn pool_pipeline(pool: Vec<PluginEntry>) -> Pipeline {
    pipeline(Vec::new(), pool)
}

/// The seed's "Initialization Policies" WorkerPool, in namespace `default`, allowing runner
/// images from Docker Hub and public ECR.
pub fn pool() -> WorkerPool {
    let text = std::fs::read_to_string(
        crate::support::repo_root().join("tests/fixtures/seed/initialization-policies.yaml"),
    )
    .unwrap();
    let mut pool: WorkerPool = yaml_serde::from_str(&text).unwrap();
    pool.metadata.namespace = Some("default".into());
    pool.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "workers.spacelift.io/ulid".into(),
            "01HN37WC3MCNE3CY9HAHWRF06P".into(),
        );
    pool.spec.allowed_runner_image_hosts = Some(vec!["docker.io".into(), "public.ecr.aws".into()]);
    pool
}

pub fn worker(pool: &WorkerPool) -> Worker {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "workers.spacelift.io/v1beta1",
        "kind": "Worker",
        "metadata": {
            "name": "test-workerpool-01hn37wc3mcne3cy9hahwrf06w",
            "namespace": pool.metadata.namespace,
            "uid": "5b7b1c2e-0000-4000-8000-000000000001",
            "labels": {
                "workers.spacelift.io/workerpool": "01HN37WC3MCNE3CY9HAHWRF06P",
                "workers.spacelift.io/ulid": "01HN37WC3MCNE3CY9HAHWRF06W",
            },
        },
        "spec": {},
    }))
    .unwrap()
}

pub fn run() -> RunSchedule {
    RunSchedule {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
        stage: "planning".into(),
        attempt: 1,
        runner_image: Some("ubuntu:24.04".into()),
        launcher_image: "public.ecr.aws/spacelift/launcher:v1".into(),
        metadata: BTreeMap::from([("stack".into(), "networking".into())]),
        ..RunSchedule::default()
    }
}

pub fn input_for(pool: &WorkerPool) -> HookInput {
    HookInput::build(pool, &worker(pool), &run()).expect("the seed pool builds")
}

pub fn input() -> HookInput {
    input_for(&pool())
}

/// The seed pool with `policy` in its initialization-policy ConfigMap.
pub fn pool_with_policy(policy: &str) -> (WorkerPool, BTreeMap<String, ConfigMap>) {
    let name = "test-workerpool-initialization-policy";
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "initialization-policy.rego".into(),
            policy.into(),
        )])),
        ..ConfigMap::default()
    };
    (pool(), BTreeMap::from([(name.to_string(), cm)]))
}

pub fn config_map(name: &str, namespace: &str, binary: &[(&str, Vec<u8>)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        binary_data: Some(
            binary
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn denied(decision: Decision) -> Denial {
    match decision {
        Decision::Denied(denial) => denial,
        Decision::Allowed(allowed) => panic!("expected a denial, got {:#?}", allowed.trail),
    }
}

pub fn allowed(decision: Decision) -> Allowed {
    match decision {
        Decision::Allowed(allowed) => *allowed,
        Decision::Denied(denial) => panic!("expected the run to be allowed: {denial}"),
    }
}

/// After a hostile case: the same host still serves a good pipeline.
pub fn a_good_run_is_unaffected() {
    let pipeline = pipeline(
        vec![example_plugin(
            "deny-latest",
            serde_json::json!({"containers": "worker"}),
            FailurePolicy::Fail,
        )],
        vec![example_plugin(
            "label-injector",
            serde_json::json!({"labels": {"team": "{run.metadata.stack}"}}),
            FailurePolicy::Fail,
        )],
    );
    let allowed = allowed(pipeline.evaluate(input()));
    assert_eq!(
        allowed.pod.metadata.labels.as_ref().unwrap()["team"],
        "networking"
    );
}

/// Reads hook metrics as Prometheus scrapes them: through a registry's text output, as
/// `name{labels}` -> value, names without the common prefix and a histogram by its `_count`.
/// Built before the calls it watches; [`Meter::moved`] is what changed since.
pub struct Meter {
    registry: Registry,
    before: BTreeMap<String, i64>,
}

const METRIC_PREFIX: &str = "spacelift_workerpool_controller_hook_";

impl Meter {
    pub fn new(metrics: &HookMetrics) -> Self {
        // The collectors are handles: these clones read the same series as the pipeline writes.
        let registry = Registry::new();
        registry
            .register(Box::new(metrics.call_duration.clone()))
            .unwrap();
        registry
            .register(Box::new(metrics.denials.clone()))
            .unwrap();
        registry.register(Box::new(metrics.errors.clone())).unwrap();
        registry
            .register(Box::new(metrics.timeouts.clone()))
            .unwrap();
        registry
            .register(Box::new(metrics.load_failures.clone()))
            .unwrap();
        registry
            .register(Box::new(metrics.slot_timeouts.clone()))
            .unwrap();
        let before = scrape(&registry);
        Self { registry, before }
    }

    /// A meter on the metrics a pipeline (or a registry's pipeline) writes to.
    pub fn of(pipeline: &Pipeline) -> Self {
        Self::new(
            pipeline
                .metrics
                .as_deref()
                .expect("the pipeline has metrics"),
        )
    }

    /// The series that changed since the meter was built, by how much.
    pub fn moved(&self) -> BTreeMap<String, i64> {
        let mut moved = scrape(&self.registry);
        for (series, value) in &mut moved {
            *value -= self.before.get(series).copied().unwrap_or(0);
        }
        moved.retain(|_, delta| *delta != 0);
        moved
    }
}

fn scrape(registry: &Registry) -> BTreeMap<String, i64> {
    let text = TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        // Histogram buckets and sums are not counts; the `_count` line is.
        .filter(|line| !line.contains("_bucket{") && !line.contains("_sum{"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let series = series
                .strip_prefix(METRIC_PREFIX)
                .unwrap_or_else(|| panic!("{series} lacks the prefix {METRIC_PREFIX}"));
            (
                series.to_string(),
                value
                    .parse::<i64>()
                    .unwrap_or_else(|e| panic!("{line}: {e}")),
            )
        })
        .collect()
}

/// The expected result of [`Meter::moved`], from `(series, delta)` pairs.
pub fn moved<const N: usize>(series: [(String, i64); N]) -> BTreeMap<String, i64> {
    BTreeMap::from(series)
}

/// The call latency histogram's sample count: one per hook call, whatever its outcome.
pub const CALLS: &str = "call_duration_seconds_count";

/// The name of the seed pool's initialization policy, as hook label.
pub const POOL_POLICY: &str = "test-workerpool-initialization-policy/initialization-policy.rego";

/// A series of the seed pool's runs, as [`Meter::moved`] names it:
/// `metric{hook="...",scope="default/test-workerpool",stage="..."}`.
pub fn series(metric: &str, stage: &str, hook: &str) -> String {
    format!(r#"{metric}{{hook="{hook}",scope="default/test-workerpool",stage="{stage}"}}"#)
}

/// The seed pool's `errors_total` series of `kind`.
pub fn errors(stage: &str, hook: &str, kind: &str) -> String {
    format!(
        r#"errors_total{{hook="{hook}",kind="{kind}",scope="default/test-workerpool",stage="{stage}"}}"#
    )
}

/// The `load_failures_total` series of `hook` in `scope` (`cluster` or `<namespace>/<pool>`).
pub fn load_failures(scope: &str, hook: &str) -> String {
    format!(r#"load_failures_total{{hook="{hook}",scope="{scope}"}}"#)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn time<F: FnMut()>(n: usize, mut f: F) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f();
        samples.push(started.elapsed());
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

/// Prints the numbers docs/plugins.md quotes.
pub fn measure() {
    let input = input();
    let pod_bytes = serde_json::to_vec(&input.pod).unwrap().len();
    println!("pod JSON: {pod_bytes} bytes");
    for name in [
        "deny-latest",
        "deny-latest-go",
        "registry-mirror",
        "resource-guard",
        "label-injector",
    ] {
        let bytes = example(name);
        let fresh = WasmHost::new(HostLimits::default()).unwrap();
        let started = Instant::now();
        let module = fresh.compile(&bytes).unwrap();
        let compile = started.elapsed();
        let settings = match name {
            "registry-mirror" => serde_json::json!({"mirrors": {"docker.io": "m.example.com"}}),
            _ => serde_json::json!({}),
        };
        let plugin = Plugin::load(
            &host(),
            name,
            &bytes,
            &spec(Some(settings), FailurePolicy::Fail),
        )
        .unwrap();
        let pipeline = pool_pipeline(vec![PluginEntry::Ready(Arc::new(plugin))]);
        for _ in 0..10 {
            pipeline.evaluate(input.clone());
        }
        let (p50, p99) = time(200, || {
            pipeline.evaluate(input.clone());
        });
        println!(
            "{name:16} size {:>8} B  compile {:>6.1} ms  pipeline call p50 {:>7.1} µs  p99 {:>7.1} µs",
            module.size(),
            compile.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    let (p50, _) = time(200, || {
        pool_pipeline(vec![]).evaluate(input.clone());
    });
    println!(
        "empty pipeline (invariants + annotation): p50 {:.1} µs",
        p50.as_secs_f64() * 1e6
    );

    // Rego: the seed policy and a five-rule v1 policy.
    let five = r#"package spacelift
import rego.v1
deny contains "privileged" if { some c in input.pod.spec.containers; c.securityContext.privileged }
deny contains "no stage" if input.run.stage == ""
deny contains msg if { some c in input.pod.spec.containers; endswith(c.image, ":latest"); msg := sprintf("%s floats", [c.name]) }
deny contains "host network" if input.pod.spec.hostNetwork
deny contains "too many" if count(input.pod.spec.containers) > 10
"#;
    let doc = serde_json::json!({"pool": input.pool, "worker": input.worker, "run": input.run, "pod": input.pod,
                                 "runnerImage": input.runner_image, "allowedRunnerImageHosts": input.allowed_runner_image_hosts})
        .to_string();
    for (name, text) in [("seed (v0)", SEED_POLICY), ("five rules (v1)", five)] {
        let started = Instant::now();
        let policy = policies()
            .compile(name, "p.rego", text, RegoVersion::Auto)
            .unwrap();
        let compile = started.elapsed();
        let (p50, p99) = time(500, || {
            policy.evaluate(&doc).unwrap();
        });
        println!(
            "rego {name:16} compile {:>6.2} ms  evaluate p50 {:>7.1} µs  p99 {:>7.1} µs",
            compile.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }

    // Why the host has its own WASI shim: the same call with wasmtime-wasi's preview1 context.
    compare_with_wasmtime_wasi(&example("deny-latest"), &input);
}

fn compare_with_wasmtime_wasi(bytes: &[u8], input: &HookInput) {
    use wasmtime::{Config, Engine, Linker, Module, Store};
    use wasmtime_wasi::p1::{self, WasiP1Ctx};
    let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
    let module = Module::new(&engine, bytes).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();
    let doc = serde_json::to_vec(&serde_json::json!({
        "abi": 1, "settings": {}, "context": {"pool": input.pool, "worker": input.worker, "run": input.run},
        "pod": input.pod, "runnerImage": input.runner_image, "allowedRunnerImageHosts": input.allowed_runner_image_hosts,
    }))
    .unwrap();
    let call = || {
        let mut store = Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
        store.set_epoch_deadline(1_000_000);
        let instance = pre.instantiate(&mut store).unwrap();
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).unwrap();
        }
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "alloc")
            .unwrap();
        let ptr = alloc.call(&mut store, doc.len() as i32).unwrap();
        memory.write(&mut store, ptr as usize, &doc).unwrap();
        let evaluate = instance
            .get_typed_func::<(i32, i32), i64>(&mut store, "evaluate")
            .unwrap();
        evaluate.call(&mut store, (ptr, doc.len() as i32)).unwrap();
    };
    let (p50, p99) = time(200, call);
    let shim_host = host();
    let compiled = shim_host.compile(bytes).unwrap();
    let limits = workerpool_operator::hooks::abi::CallLimits {
        timeout: Duration::from_secs(1),
        memory_limit_bytes: 64 << 20,
        max_output_bytes: 1 << 20,
        max_stdio_bytes: 16 << 10,
    };
    let (shim50, shim99) = time(200, || {
        workerpool_operator::hooks::abi::call(
            &shim_host,
            &compiled,
            workerpool_operator::hooks::abi::Entry::Evaluate,
            &doc,
            &limits,
        )
        .unwrap();
    });
    println!(
        "deny-latest via the host's shim:   call p50 {:.1} µs p99 {:.1} µs",
        shim50.as_secs_f64() * 1e6,
        shim99.as_secs_f64() * 1e6
    );
    for (level, epochs) in [
        (wasmtime::OptLevel::None, true),
        (wasmtime::OptLevel::Speed, false),
        (wasmtime::OptLevel::Speed, true),
    ] {
        let mut config = Config::new();
        config.cranelift_opt_level(level).epoch_interruption(epochs);
        let engine = Engine::new(&config).unwrap();
        let started = Instant::now();
        Module::new(&engine, bytes).unwrap();
        println!(
            "compile deny-latest with {level:?}, epochs {epochs}: {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let (ctx50, _) = time(200, || {
        drop(wasmtime_wasi::WasiCtxBuilder::new().build_p1());
    });
    println!(
        "deny-latest via wasmtime-wasi p1: call p50 {:.1} µs p99 {:.1} µs (building WasiP1Ctx alone: {:.1} µs)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        ctx50.as_secs_f64() * 1e6
    );
}
