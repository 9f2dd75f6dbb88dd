//! Hostile cases that push the operator's bounds (issue 12, items 1, 5 and 7): policies that
//! ask for enormous memory, plugin sources that are huge or slow to compile, and a pool whose
//! slow hooks would take every evaluation slot. Each asserts the exact text a user sees and
//! where, and that the operator goes on serving other pools.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hooks_support::*;
use workerpool_operator::crd::WorkerPool;
use workerpool_operator::hooks::host::HostLimits;
use workerpool_operator::hooks::registry::LoadStatus;
use workerpool_operator::hooks::{
    Decision, FailurePolicy, HookMetrics, HookRegistry, PluginSpec, SlotLimits, Stage, WasmHost,
};

// ---- policies that ask for too much memory ----------------------------------------------

const MEMORY_FIX: &str = "raise limits.maxPolicyMemoryMib (Helm value hooks.limits.maxPolicyMemoryMib) if it needs more, or fix the policy; the run is denied";

fn hungry(rule: &str) -> String {
    format!("package spacelift\nimport rego.v1\n{rule}\n")
}

#[test]
fn a_policy_asking_a_builtin_for_an_enormous_value_is_denied_and_the_operator_goes_on() {
    let cases = [
        // One allocation of 7.2 PB: in process, `memory allocation ... failed` and exit 134.
        (
            "range",
            hungry("deny contains \"big\" if count(numbers.range(1, 300000000000000)) > 0"),
            Some(7_200_000_000_000_000u64),
        ),
        // A gigabyte written by one builtin call, before regorus checks any limit.
        (
            "sprintf",
            hungry("deny contains msg if msg := sprintf(\"%0999999999d\", [1])"),
            None,
        ),
        // A 1 MB string, fine, joined 40 times in one builtin call.
        (
            "concat",
            hungry(
                "x := sprintf(\"%01000000d\", [1])\nbig := concat(\"\", [x | some i in numbers.range(1, 40)])\ndeny contains \"big\" if count(big) > 0",
            ),
            None,
        ),
    ];
    for (case, policy, requested) in cases {
        let (pool, maps) = pool_with_policy(&policy);
        let registry = registry();
        assert!(registry.load_pool(&pool, &maps).is_healthy(), "{case}");
        let pipeline = registry.pipeline(&pool);
        let meter = Meter::of(&pipeline);
        let denial = denied(pipeline.evaluate(input_for(&pool)));
        assert_eq!(denial.stage, Stage::PoolPolicy, "{case}");
        let reason = &denial.reasons[0];
        let prefix = format!(
            "pool initialization policy \"{POOL_POLICY}\" failed: exceeded its memory limit of 32 MiB (it asked for {}",
            requested.map_or(String::new(), |n| format!("{n} bytes more with "))
        );
        assert!(reason.starts_with(&prefix), "{case}: {reason}");
        assert!(
            reason.ends_with(&format!(" in use); {MEMORY_FIX}")),
            "{case}: {reason}"
        );
        assert_eq!(
            meter.moved(),
            moved([
                (series(CALLS, "poolPolicy", POOL_POLICY), 1),
                (series("denials_total", "poolPolicy", POOL_POLICY), 1),
                (errors("poolPolicy", POOL_POLICY, "memory"), 1),
            ]),
            "{case}"
        );
        // The next evaluation gets a new evaluator process, and another pool is unaffected.
        let (calm, calm_maps) = pool_with_policy(SEED_POLICY);
        registry.load_pool(&calm, &calm_maps);
        allowed(registry.pipeline(&calm).evaluate(input_for(&calm)));
    }
    a_good_run_is_unaffected();
}

// ---- plugin sources -------------------------------------------------------------------------

fn pool_with_plugin(name: &str, plugin: PluginSpec) -> WorkerPool {
    let mut pool = pool();
    pool.metadata.name = Some(name.into());
    pool.spec.pod = None;
    pool.spec.plugins = vec![plugin];
    pool
}

fn plugin(config_map: &str, key: &str) -> PluginSpec {
    PluginSpec {
        config_map: config_map.into(),
        key: Some(key.into()),
        ..PluginSpec::default()
    }
}

#[test]
fn a_gzip_bomb_stops_at_the_module_cap_and_says_so_on_hooks_ready() {
    let registry = registry();
    // 40 KiB of gzip that would decompress to 64 MiB.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 100 << 10, "{}", bomb.len());
    let pool = pool_with_plugin("bombed", plugin("bomb", "plugin.wasm.gz"));
    let maps = BTreeMap::from([(
        "bomb".to_string(),
        config_map("bomb", "default", &[("plugin.wasm.gz", bomb)]),
    )]);
    let report = registry.load_pool(&pool, &maps);
    assert_eq!(
        registry.pool_condition(&report).message,
        "plugin \"bomb\" (ConfigMap bomb key plugin.wasm.gz): ConfigMap default/bomb key \
         \"plugin.wasm.gz\": decompresses to more than 16 MiB, the most a plugin module may have \
         (limits.maxModuleMib, Helm value hooks.limits.maxModuleMib): build a smaller module, or \
         raise the limit; runs are denied until it loads (failurePolicy: Fail)"
    );
}

#[test]
fn a_broken_plugin_is_not_compiled_again_until_its_bytes_change() {
    // A host of its own, so that its compile count is this test's.
    let host = WasmHost::new(HostLimits::default()).unwrap();
    let registry = HookRegistry::new(host.clone(), policies(), Arc::new(HookMetrics::new()));
    registry.load_cluster(&Default::default(), &BTreeMap::new());
    let pool = pool_with_plugin("broken-pool", plugin("broken", "plugin.wasm"));
    let maps = |bytes: &[u8]| {
        BTreeMap::from([(
            "broken".to_string(),
            config_map("broken", "default", &[("plugin.wasm", bytes.to_vec())]),
        )])
    };
    let first = registry.load_pool(&pool, &maps(b"\0asm not really"));
    let message = registry.pool_condition(&first).message;
    assert!(
        message.contains("the module is not valid WebAssembly"),
        "{message}"
    );
    assert_eq!(host.compiled(), 1);
    // Every pool reconcile reloads: the same bytes fail the same way, and cost a digest.
    for _ in 0..3 {
        let again = registry.load_pool(&pool, &maps(b"\0asm not really"));
        assert_eq!(registry.pool_condition(&again).message, message);
    }
    assert_eq!(host.compiled(), 1);
    // New bytes are tried.
    let fixed = registry.load_pool(&pool, &maps(&fixture("bad-json")));
    assert!(
        matches!(fixed.results[0].status, LoadStatus::Loaded { .. }),
        "{fixed:?}"
    );
    assert_eq!(host.compiled(), 2);
}

#[test]
fn a_module_too_slow_to_compile_is_reported_and_another_pool_still_loads() {
    // A host that gives a compile one second: an example plugin takes several (epoch
    // instrumentation, one core), as a tenant's big module would take minutes.
    let host = WasmHost::new(HostLimits {
        compile_timeout: Duration::from_secs(1),
        ..HostLimits::default()
    })
    .unwrap();
    let registry = HookRegistry::new(host, policies(), Arc::new(HookMetrics::new()));
    registry.load_cluster(&Default::default(), &BTreeMap::new());
    let slow = pool_with_plugin("slow-pool", plugin("slow", "plugin.wasm"));
    let slow_maps = BTreeMap::from([(
        "slow".to_string(),
        config_map(
            "slow",
            "default",
            &[("plugin.wasm", example("registry-mirror"))],
        ),
    )]);
    let report = registry.load_pool(&slow, &slow_maps);
    assert_eq!(
        registry.pool_condition(&report).message,
        "plugin \"slow\" (ConfigMap slow key plugin.wasm): compiling the module took longer than \
         1 s (limits.pluginCompileTimeoutSeconds, Helm value \
         hooks.limits.pluginCompileTimeoutSeconds): make the module smaller, or raise the limit; \
         runs are denied until it loads (failurePolicy: Fail)"
    );
    // That compile goes on in the background, in one of the two slots: another pool's
    // plugin compiles meanwhile.
    let quick = pool_with_plugin("quick-pool", plugin("quick", "plugin.wasm"));
    let quick_maps = BTreeMap::from([(
        "quick".to_string(),
        config_map("quick", "default", &[("plugin.wasm", fixture("bad-json"))]),
    )]);
    let report = registry.load_pool(&quick, &quick_maps);
    assert!(
        matches!(report.results[0].status, LoadStatus::Loaded { .. }),
        "{report:?}"
    );
}

// ---- fair evaluation slots ------------------------------------------------------------------

/// A pool whose only plugin spins until its deadline (1 s, the most a pool plugin may ask).
fn spinning_pool(registry: &HookRegistry) -> WorkerPool {
    let pool = pool_with_plugin(
        "spinning",
        PluginSpec {
            timeout_millis: Some(1000),
            failure_policy: FailurePolicy::Fail,
            ..plugin("spin", "plugin.wasm")
        },
    );
    let maps = BTreeMap::from([(
        "spin".to_string(),
        config_map("spin", "default", &[("plugin.wasm", fixture("spin"))]),
    )]);
    assert!(registry.load_pool(&pool, &maps).is_healthy());
    pool
}

fn quiet_pool(registry: &HookRegistry) -> WorkerPool {
    let mut pool = pool();
    pool.metadata.name = Some("quiet".into());
    pool.spec.pod = None;
    registry.load_pool(&pool, &BTreeMap::new());
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_pools_slow_hooks_do_not_delay_another_pools_runs() {
    let registry = Arc::new(
        HookRegistry::new(host(), policies(), Arc::new(HookMetrics::new()))
            .with_slots(SlotLimits::new(2, 1, Duration::from_secs(60))),
    );
    registry.load_cluster(&Default::default(), &BTreeMap::new());
    let spinning = spinning_pool(&registry);
    let quiet = quiet_pool(&registry);
    let finished = Arc::new(Mutex::new(Vec::new()));
    let mut runs = Vec::new();
    for (label, pool, count) in [("spinning", &spinning, 3), ("quiet", &quiet, 3)] {
        for _ in 0..count {
            let (pipeline, input) = (registry.pipeline(pool), input_for(pool));
            let finished = finished.clone();
            runs.push(tokio::spawn(async move {
                let decision = pipeline.evaluate_blocking(input).await;
                finished.lock().unwrap().push((label, decision));
            }));
            // The spinning pool's runs come first, as if its backend were busier.
            tokio::task::yield_now().await;
        }
    }
    for run in runs {
        run.await.unwrap();
    }
    let finished = finished.lock().unwrap();
    let order: Vec<&str> = finished.iter().map(|(label, _)| *label).collect();
    // Each spinning run holds the pool's one slot for a second; the quiet pool's runs take the
    // other slot and are all decided before the spinning pool's first run ends.
    assert_eq!(
        order,
        [
            "quiet", "quiet", "quiet", "spinning", "spinning", "spinning"
        ]
    );
    for (label, decision) in finished.iter() {
        match (*label, decision) {
            ("quiet", Decision::Allowed(_)) => {}
            ("spinning", Decision::Denied(denial)) => assert_eq!(
                denial.reasons,
                [
                    "pool plugin \"spin\" failed: timed out after 1000 ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis)"
                ]
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_waits_too_long_for_a_slot_is_denied_saying_so() {
    let registry = Arc::new(
        HookRegistry::new(host(), policies(), Arc::new(HookMetrics::new()))
            .with_slots(SlotLimits::new(2, 1, Duration::from_millis(1500))),
    );
    registry.load_cluster(&Default::default(), &BTreeMap::new());
    let spinning = spinning_pool(&registry);
    let meter = Meter::of(&registry.pipeline(&spinning));
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (pipeline, input) = (registry.pipeline(&spinning), input_for(&spinning));
        runs.push(tokio::spawn(async move {
            pipeline.evaluate_blocking(input).await
        }));
        // So that they queue in this order.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut decided_by = Vec::new();
    let mut busy = None;
    for run in runs {
        let denial = denied(run.await.unwrap());
        decided_by.push(denial.hook.clone());
        if denial.hook == "hooks-busy" {
            busy = Some(denial);
        }
    }
    // The first takes its turn (a second), the second waits for it; the last waited 1.5 s
    // for its turn, after two seconds' worth of runs ahead of it.
    assert_eq!(decided_by[0], "spin", "{decided_by:?}");
    assert_eq!(decided_by[2], "hooks-busy", "{decided_by:?}");
    let busy = busy.expect("a run denied for waiting");
    assert_eq!(busy.stage, Stage::Invariants);
    assert_eq!(
        busy.reasons,
        [
            "waited 1s for a hook evaluation slot (this pool may evaluate 1 run(s) at once, the operator 2: limits.maxConcurrentEvaluationsPerPool and limits.maxConcurrentEvaluations; its slow hooks hold them); the run is denied rather than left waiting"
        ]
    );
    let waited_too_long = decided_by.iter().filter(|h| *h == "hooks-busy").count() as i64;
    let scope = "default/spinning";
    let moved = meter.moved();
    assert_eq!(
        moved[&format!(r#"slot_timeouts_total{{scope="{scope}"}}"#)],
        waited_too_long
    );
    assert_eq!(
        moved[&format!(r#"denials_total{{hook="hooks-busy",scope="{scope}",stage="invariants"}}"#)],
        waited_too_long
    );
}
