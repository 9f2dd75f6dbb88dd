//! The hook pipeline with real compiled plugins (built by `plugins/build`), hostile WAT
//! fixtures (tests/fixtures/plugins/) and real regorus. Each hostile case asserts the exact
//! text a user sees, the hook metrics it moves (exactly, read as Prometheus scrapes them),
//! and that the next good run is unaffected.

#[path = "hooks/support.rs"]
mod hooks_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooks_support::*;
use workerpool_operator::hooks::config::PoolPluginCaps;
use workerpool_operator::hooks::registry::{FetchedConfigMaps, LoadStatus, pool_config_maps};
use workerpool_operator::hooks::{
    Decision, FailurePolicy, HookConfig, HookMetrics, Outcome, Plugin, PluginSpec, PolicyEntry,
    RegoVersion, Stage, TRAIL_ANNOTATION,
};

// ---- hostile plugins ----------------------------------------------------------------------

/// What one failed call of pool plugin `hook` under `failurePolicy: Fail` moves: the call is
/// timed, its error counted under `kind`, and the run it denied counted as a denial.
fn failed_pool_plugin(hook: &str, kind: &str) -> BTreeMap<String, i64> {
    moved([
        (series(CALLS, "poolPlugin", hook), 1),
        (series("denials_total", "poolPlugin", hook), 1),
        (errors("poolPlugin", hook, kind), 1),
    ])
}

#[test]
fn an_infinite_loop_is_timed_out() {
    let pipeline = pool_pipeline(vec![fixture_plugin("spin", FailurePolicy::Fail)]);
    let meter = Meter::of(&pipeline);
    let started = Instant::now();
    let denial = denied(pipeline.evaluate(input()));
    assert_eq!(denial.stage, Stage::PoolPlugin);
    assert_eq!(denial.hook, "spin");
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"spin\" failed: timed out after 100 ms (raise timeoutMillis if the plugin needs longer)"
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPlugin", "spin"), 1),
            (series("denials_total", "poolPlugin", "spin"), 1),
            (errors("poolPlugin", "spin", "timeout"), 1),
            (series("timeouts_total", "poolPlugin", "spin"), 1),
        ])
    );
    // The histogram holds the time the call took, which is at least its 100 ms deadline.
    let seconds = pipeline
        .metrics
        .as_ref()
        .unwrap()
        .call_duration
        .with_label_values(&["default/test-workerpool", "poolPlugin", "spin"])
        .get_sample_sum();
    assert!((0.1..1.0).contains(&seconds), "{seconds}");
    a_good_run_is_unaffected();
}

#[test]
fn a_memory_hog_is_capped() {
    let pipeline = pool_pipeline(vec![fixture_plugin("hog", FailurePolicy::Fail)]);
    let meter = Meter::of(&pipeline);
    let denial = denied(pipeline.evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"hog\" failed: exceeded its memory limit of 64 MiB (it asked for 64.1 MiB; raise memoryLimitMib if it needs more)"
        ]
    );
    assert_eq!(meter.moved(), failed_pool_plugin("hog", "memory"));
    a_good_run_is_unaffected();
}

#[test]
fn a_trap_reports_what_the_plugin_wrote_to_stderr() {
    let pipeline = pool_pipeline(vec![fixture_plugin("trap", FailurePolicy::Fail)]);
    let meter = Meter::of(&pipeline);
    let denial = denied(pipeline.evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"trap\" failed: trapped: wasm `unreachable` instruction executed (stderr: panicked at hostile.rs)"
        ]
    );
    assert_eq!(meter.moved(), failed_pool_plugin("trap", "trap"));
    a_good_run_is_unaffected();
}

#[test]
fn a_rust_panic_is_a_trap_with_the_panic_message() {
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "panic"}),
        FailurePolicy::Fail,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    let reason = &denial.reasons[0];
    assert!(
        reason.starts_with("pool plugin \"mischief\" failed: trapped: wasm `unreachable` instruction executed (stderr: ")
            && reason.contains("mischief managed"),
        "{reason}"
    );
    a_good_run_is_unaffected();
}

#[test]
fn huge_output_is_refused() {
    let pipeline = pool_pipeline(vec![fixture_plugin("huge", FailurePolicy::Fail)]);
    let meter = Meter::of(&pipeline);
    let denial = denied(pipeline.evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"huge\" failed: returned 16777216 bytes of output, more than the limit of 1048576 bytes"
        ]
    );
    assert_eq!(meter.moved(), failed_pool_plugin("huge", "abi"));
    a_good_run_is_unaffected();
}

#[test]
fn invalid_json_is_refused() {
    let pipeline = pool_pipeline(vec![fixture_plugin("bad-json", FailurePolicy::Fail)]);
    let meter = Meter::of(&pipeline);
    let denial = denied(pipeline.evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"bad-json\" failed: returned output that is not a valid hook result: expected ident at line 1 column 2"
        ]
    );
    assert_eq!(meter.moved(), failed_pool_plugin("bad-json", "output"));
    a_good_run_is_unaffected();
}

#[test]
fn a_pod_without_the_worker_container_is_refused() {
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "remove-worker"}),
        FailurePolicy::Fail,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::Invariants, "mischief")
    );
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"mischief\" removed the \"worker\" container from spec.containers, which hooks may not do"
        ]
    );
    a_good_run_is_unaffected();
}

#[test]
fn a_switch_to_a_disallowed_image_host_is_refused() {
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "switch-host"}),
        FailurePolicy::Fail,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::Invariants, "invariants")
    );
    assert_eq!(
        denial.reasons,
        [
            "runner image \"evil.example.com/miner:1.0\" is hosted on \"evil.example.com\", which is not in \
          spec.allowedRunnerImageHosts [docker.io, public.ecr.aws]: add the host there or use an image from an allowed registry"
        ]
    );
    // The trail shows who changed the image before the final check refused it.
    assert_eq!(
        denial.trail[0].changes,
        ["spec.containers[worker].image", "runnerImage"]
    );
    a_good_run_is_unaffected();
}

#[test]
fn removing_the_run_id_label_is_refused() {
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "remove-run-id"}),
        FailurePolicy::Ignore,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"mischief\" removed label workers.spacelift.io/run-id, which hooks may not do"
        ],
        "failurePolicy: Ignore does not excuse a broken invariant"
    );
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "rename"}),
        FailurePolicy::Fail,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"mischief\" changed metadata.name from \"01hn37wc3mcne3cy9hahwrf06k-planning-1\" to \"renamed\", which hooks may not do"
        ]
    );
    a_good_run_is_unaffected();
}

#[test]
fn setting_the_operators_outcome_annotation_is_refused() {
    // An outcome annotation on a new Pod would make the controller take it as already
    // reported, so its run would never be reported or its worker freed by its end.
    let plugin = example_plugin(
        "mischief",
        serde_json::json!({"do": "set-outcome"}),
        FailurePolicy::Ignore,
    );
    let denial = denied(pool_pipeline(vec![plugin]).evaluate(input()));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::Invariants, "mischief")
    );
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"mischief\" added annotation workers.spacelift.io/outcome, which hooks may not do"
        ]
    );
    a_good_run_is_unaffected();
}

#[test]
fn an_import_the_host_does_not_provide_is_refused_at_load() {
    let err = Plugin::load(
        &host(),
        "bad-import",
        &fixture("bad-import"),
        &spec(None, FailurePolicy::Fail),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the module imports `env::launch_missiles`, which the host does not provide (plugins may import \
         only the WASI preview1 functions listed in docs/plugins.md, from `wasi_snapshot_preview1`)"
    );
    a_good_run_is_unaffected();
}

#[test]
fn a_failing_plugin_with_failure_policy_ignore_is_skipped_and_recorded() {
    let pipeline = pool_pipeline(vec![
        fixture_plugin("spin", FailurePolicy::Ignore),
        example_plugin("deny-latest", serde_json::json!({}), FailurePolicy::Fail),
    ]);
    let meter = Meter::of(&pipeline);
    let allowed = allowed(pipeline.evaluate(input()));
    assert_eq!(allowed.trail[0].outcome, Outcome::Skipped);
    assert_eq!(
        allowed.trail[0].message.as_deref(),
        Some(
            "pool plugin \"spin\" failed: timed out after 100 ms (raise timeoutMillis if the plugin needs longer) (failurePolicy: Ignore)"
        )
    );
    assert_eq!(allowed.trail[1].outcome, Outcome::Allowed);
    // Counted as a timeout, but the run was not denied.
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPlugin", "deny-latest"), 1),
            (series(CALLS, "poolPlugin", "spin"), 1),
            (errors("poolPlugin", "spin", "timeout"), 1),
            (series("timeouts_total", "poolPlugin", "spin"), 1),
        ])
    );
}

#[test]
fn every_call_of_a_good_run_is_timed_and_nothing_else_is_counted() {
    let pipeline = pool_pipeline(vec![
        example_plugin(
            "label-injector",
            serde_json::json!({"labels": {"team": "{run.metadata.stack}"}}),
            FailurePolicy::Fail,
        ),
        example_plugin("deny-latest", serde_json::json!({}), FailurePolicy::Fail),
    ]);
    let meter = Meter::of(&pipeline);
    allowed(pipeline.evaluate(input()));
    allowed(pipeline.evaluate(input()));
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPlugin", "deny-latest"), 2),
            (series(CALLS, "poolPlugin", "label-injector"), 2),
        ])
    );
}

#[test]
fn a_plugin_that_denies_is_counted_as_a_denial_not_an_error() {
    let pipeline = pool_pipeline(vec![example_plugin(
        "deny-latest",
        serde_json::json!({"containers": "worker"}),
        FailurePolicy::Fail,
    )]);
    let meter = Meter::of(&pipeline);
    let mut input = input();
    input.runner_image = "ubuntu:latest".into();
    workerpool_operator::hooks::invariants::set_worker_image(&mut input.pod, "ubuntu:latest");
    let denial = denied(pipeline.evaluate(input));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::PoolPlugin, "deny-latest")
    );
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPlugin", "deny-latest"), 1),
            (series("denials_total", "poolPlugin", "deny-latest"), 1),
        ])
    );
}

// ---- hostile policies ---------------------------------------------------------------------

#[test]
fn a_policy_with_a_syntax_error_denies_the_pools_runs_and_says_why() {
    let (pool, maps) = pool_with_policy("package spacelift\n\ndeny[\"unterminated] {\n  true\n}\n");
    let registry = registry();
    let meter = Meter::of(&registry.pipeline(&pool));
    let report = registry.load_pool(&pool, &maps);
    assert_eq!(
        meter.moved(),
        moved([(load_failures("default/test-workerpool", POOL_POLICY), 1)])
    );
    let problem = report.problems().next().expect("a problem");
    let LoadStatus::Broken { error } = &problem.status else {
        panic!("{problem:?}")
    };
    assert!(
        error.starts_with(
            "does not compile: does not parse as Rego v0 (set regoVersion to pin the syntax): "
        ),
        "{error}"
    );
    assert_eq!(
        error,
        "does not compile: does not parse as Rego v0 (set regoVersion to pin the syntax): \
         initialization-policy.rego:3:22: invalid character in string"
    );
    assert!(!report.condition().status);
    let pipeline = registry.pipeline(&pool);
    let meter = Meter::of(&pipeline);
    let denial = denied(pipeline.evaluate(input_for(&pool)));
    // Counted like a plugin that never loaded: a call, an `unavailable` error, a denial.
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPolicy", POOL_POLICY), 1),
            (errors("poolPolicy", POOL_POLICY, "unavailable"), 1),
            (series("denials_total", "poolPolicy", POOL_POLICY), 1),
        ])
    );
    assert_eq!(denial.stage, Stage::PoolPolicy);
    assert_eq!(
        denial.hook,
        "test-workerpool-initialization-policy/initialization-policy.rego"
    );
    assert_eq!(
        denial.reasons,
        [format!(
            "pool initialization policy \"test-workerpool-initialization-policy/initialization-policy.rego\" is broken, so every run is denied until it is fixed: {error}"
        )]
    );
    a_good_run_is_unaffected();
}

#[test]
fn a_policy_that_loops_is_stopped_and_denies() {
    let looping = "package spacelift\nimport rego.v1\ndeny contains \"never\" if {\n  some i in numbers.range(1, 30000)\n  some j in numbers.range(1, 30000)\n  i * j < 0\n}\n";
    let (pool, maps) = pool_with_policy(looping);
    let registry = registry();
    assert!(registry.load_pool(&pool, &maps).is_healthy());
    let pipeline = registry.pipeline(&pool);
    let meter = Meter::of(&pipeline);
    let started = Instant::now();
    let denial = denied(pipeline.evaluate(input_for(&pool)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        denial.reasons,
        [
            "pool initialization policy \"test-workerpool-initialization-policy/initialization-policy.rego\" failed: \
          evaluation took longer than 100 ms (the policy time limit); the run is denied"
        ]
    );
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPolicy", POOL_POLICY), 1),
            (series("denials_total", "poolPolicy", POOL_POLICY), 1),
            (errors("poolPolicy", POOL_POLICY, "timeout"), 1),
            (series("timeouts_total", "poolPolicy", POOL_POLICY), 1),
        ])
    );
    a_good_run_is_unaffected();
}

// ---- the seed and the examples ------------------------------------------------------------

#[test]
fn the_seeds_initialization_policy_is_resolved_from_the_volume_and_allows() {
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    assert_eq!(
        pool_config_maps(&pool).into_iter().collect::<Vec<_>>(),
        ["test-workerpool-initialization-policy"]
    );
    let registry = registry();
    let report = registry.load_pool(&pool, &maps);
    assert!(report.is_healthy(), "{report:?}");
    let allowed = allowed(registry.pipeline(&pool).evaluate(input_for(&pool)));
    // The mount and the variable stay on the Pod for the launcher.
    let init = allowed
        .pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap();
    let init = init.iter().find(|c| c.name == "init").unwrap();
    assert!(
        init.env
            .iter()
            .flatten()
            .any(|e| e.name == "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY")
    );
    assert!(
        init.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/opt/spacelift/policies/initialization")
    );
    let trail = &allowed.trail;
    assert_eq!(trail[0].stage, Stage::PoolPolicy);
    assert_eq!(trail[0].outcome, Outcome::Allowed);
}

#[test]
fn a_denying_policy_denies_with_every_message() {
    let policy = "package spacelift\n\ndeny[sprintf(\"stage %s is frozen\", [input.run.stage])] { input.run.stage == \"planning\" }\ndeny[\"no ubuntu\"] { startswith(input.runnerImage, \"ubuntu\") }\n";
    let (pool, maps) = pool_with_policy(policy);
    let registry = registry();
    assert!(registry.load_pool(&pool, &maps).is_healthy());
    let pipeline = registry.pipeline(&pool);
    let meter = Meter::of(&pipeline);
    let mut denial = denied(pipeline.evaluate(input_for(&pool)));
    denial.reasons.sort();
    assert_eq!(denial.reasons, ["no ubuntu", "stage planning is frozen"]);
    // One denial however many messages.
    assert_eq!(
        meter.moved(),
        moved([
            (series(CALLS, "poolPolicy", POOL_POLICY), 1),
            (series("denials_total", "poolPolicy", POOL_POLICY), 1),
        ])
    );
}

#[test]
fn examples_change_the_pod_and_the_trail_says_which_changed_what() {
    let pipeline = pipeline(
        vec![example_plugin(
            "registry-mirror",
            serde_json::json!({"mirrors": {"docker.io": "mirror.example.com/hub"}}),
            FailurePolicy::Fail,
        )],
        vec![
            example_plugin(
                "label-injector",
                serde_json::json!({"labels": {"spacelift.io/stage": "{run.stage}"}}),
                FailurePolicy::Fail,
            ),
            example_plugin(
                "resource-guard",
                serde_json::json!({"defaults": {"requests": {"cpu": "250m"}}, "containers": ["worker"]}),
                FailurePolicy::Fail,
            ),
            example_plugin("deny-latest", serde_json::json!({}), FailurePolicy::Fail),
        ],
    );
    let allowed = allowed(pipeline.evaluate(input()));
    assert_eq!(
        allowed.runner_image,
        "mirror.example.com/hub/library/ubuntu:24.04"
    );
    assert_eq!(
        allowed.allowed_runner_image_hosts,
        ["docker.io", "public.ecr.aws", "mirror.example.com"]
    );
    let summary: Vec<(Stage, &str, Outcome, Vec<String>)> = allowed
        .trail
        .iter()
        .map(|r| (r.stage, r.hook.as_str(), r.outcome, r.changes.clone()))
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        summary,
        [
            (
                Stage::ClusterPlugin,
                "registry-mirror",
                Outcome::Changed,
                s(&[
                    "spec.containers[worker].image",
                    "runnerImage",
                    "allowedRunnerImageHosts"
                ])
            ),
            (
                Stage::PoolPlugin,
                "label-injector",
                Outcome::Changed,
                s(&["metadata.labels[\"spacelift.io/stage\"]"])
            ),
            (
                Stage::PoolPlugin,
                "resource-guard",
                Outcome::Changed,
                s(&["spec.containers[worker].resources"])
            ),
            (Stage::PoolPlugin, "deny-latest", Outcome::Allowed, vec![]),
            (Stage::Invariants, "invariants", Outcome::Allowed, vec![]),
        ]
    );
    let annotation = &allowed.pod.metadata.annotations.as_ref().unwrap()[TRAIL_ANNOTATION];
    assert!(
        annotation.starts_with(
            r#"[{"stage":"clusterPlugin","hook":"registry-mirror","outcome":"changed","changes":["#
        ),
        "{annotation}"
    );
    assert!(!annotation.contains("micros"));
}

#[test]
fn the_go_and_rust_deny_latest_plugins_decide_alike() {
    let floats = |image: &str| {
        format!(
            "images must be pinned to a tag other than latest (or a digest): container \"worker\" uses \"{image}\""
        )
    };
    let digest = "ubuntu@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let cases = [
        ("ubuntu", floats("ubuntu")),
        ("ubuntu:latest", floats("ubuntu:latest")),
        ("ubuntu:24.04", "allowed".to_string()),
        (digest, "allowed".to_string()),
    ];
    for (image, expected) in cases {
        let mut input = input();
        input.runner_image = image.to_string();
        workerpool_operator::hooks::invariants::set_worker_image(&mut input.pod, image);
        let decide = |name: &str| match pool_pipeline(vec![example_plugin(
            name,
            serde_json::json!({"containers": "worker"}),
            FailurePolicy::Fail,
        )])
        .evaluate(input.clone())
        {
            Decision::Allowed(_) => "allowed".to_string(),
            Decision::Denied(d) => {
                assert_eq!((d.stage, d.hook.as_str()), (Stage::PoolPlugin, name));
                d.reasons.join("; ")
            }
        };
        assert_eq!(decide("deny-latest"), expected, "Rust, {image}");
        assert_eq!(decide("deny-latest-go"), expected, "Go, {image}");
    }
}

// ---- registry: ConfigMaps, gzip, hot reload -------------------------------------------------

#[test]
fn a_broken_new_version_keeps_the_previous_one_in_service() {
    let registry = registry();
    let config = HookConfig::parse(
        "plugins:\n  - configMap: deny-latest\n    key: plugin.wasm.gz\n    settings: {containers: worker}\n",
        "hooks.yaml",
    )
    .unwrap();
    let good = config_map(
        "deny-latest",
        "ops",
        &[("plugin.wasm.gz", gzip(&example("deny-latest")))],
    );
    let report = registry.load_cluster(
        &config,
        &BTreeMap::from([("deny-latest".into(), good.clone())]),
    );
    assert!(
        matches!(report.results[0].status, LoadStatus::Loaded { .. }),
        "{report:?}"
    );
    let report = registry.load_cluster(&config, &BTreeMap::from([("deny-latest".into(), good)]));
    assert_eq!(report.results[0].status, LoadStatus::Unchanged);

    let broken = config_map(
        "deny-latest",
        "ops",
        &[("plugin.wasm.gz", fixture("bad-import"))],
    );
    let report = registry.load_cluster(&config, &BTreeMap::from([("deny-latest".into(), broken)]));
    let message = report.results[0].message();
    assert!(
        message.starts_with("plugin \"deny-latest\" (ConfigMap deny-latest key plugin.wasm.gz): the module imports `env::launch_missiles`"),
        "{message}"
    );
    assert!(
        message.contains("; the previous version sha256:"),
        "{message}"
    );
    let condition = report.condition();
    assert_eq!(
        (condition.status, condition.reason),
        (false, "HookLoadFailed")
    );

    // The old version still decides: an untagged runner image is denied by it.
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    registry.load_pool(&pool, &maps);
    let mut input = input_for(&pool);
    input.runner_image = "ubuntu".into();
    workerpool_operator::hooks::invariants::set_worker_image(&mut input.pod, "ubuntu");
    let denial = denied(registry.pipeline(&pool).evaluate(input));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::ClusterPlugin, "deny-latest")
    );

    // A missing ConfigMap is reported the same way.
    let report = registry.load_cluster(&config, &BTreeMap::new());
    assert!(
        report.results[0]
            .message()
            .contains("ConfigMap deny-latest was not found"),
        "{report:?}"
    );
}

#[test]
fn a_plugin_that_never_loaded_follows_its_failure_policy() {
    let registry = registry();
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    let meter = Meter::of(&registry.pipeline(&pool));
    let config = HookConfig::parse(
        "plugins:\n  - configMap: missing\n    failurePolicy: Fail\n",
        "hooks.yaml",
    )
    .unwrap();
    let report = registry.load_cluster(&config, &BTreeMap::new());
    assert_eq!(
        meter.moved(),
        moved([(load_failures("cluster", "missing"), 1)])
    );
    assert_eq!(
        report.results[0].message(),
        "plugin \"missing\" (ConfigMap missing): ConfigMap missing was not found: create it or fix the \
         reference; runs are denied until it loads (failurePolicy: Fail)"
    );
    registry.load_pool(&pool, &maps);
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        denial.reasons,
        [
            "cluster plugin \"missing\" failed: is not loaded: ConfigMap missing was not found: create it or fix the reference"
        ]
    );
    // In a run, a cluster plugin is counted under the pool's scope; it denies before the
    // pool's policy is called.
    assert_eq!(
        meter.moved(),
        moved([
            (load_failures("cluster", "missing"), 1),
            (series(CALLS, "clusterPlugin", "missing"), 1),
            (series("denials_total", "clusterPlugin", "missing"), 1),
            (errors("clusterPlugin", "missing", "unavailable"), 1),
        ])
    );
}

#[test]
fn cluster_policies_run_after_the_pools_policy() {
    let registry = registry();
    let config = HookConfig::parse(
        "policies:\n  - name: no-applies\n    regoVersion: v1\n    rego: |\n      package spacelift\n      deny contains \"no applies today\" if input.run.stage == \"planning\"\n",
        "hooks.yaml",
    )
    .unwrap();
    assert!(
        registry
            .load_cluster(&config, &BTreeMap::new())
            .is_healthy()
    );
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    registry.load_pool(&pool, &maps);
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::ClusterPolicy, "no-applies")
    );
    assert_eq!(denial.trail[0].stage, Stage::PoolPolicy);
    assert_eq!(denial.reasons, ["no applies today"]);
}

#[test]
fn one_pools_broken_hooks_do_not_touch_another_pool() {
    let registry = registry();
    let (broken_pool, maps) = pool_with_policy("package spacelift\ndeny[");
    registry.load_pool(&broken_pool, &maps);
    let mut other = broken_pool.clone();
    other.metadata.name = Some("other-pool".into());
    other.spec.pod = None;
    registry.load_pool(&other, &BTreeMap::new());
    assert!(matches!(
        registry
            .pipeline(&broken_pool)
            .evaluate(input_for(&broken_pool)),
        Decision::Denied(_)
    ));
    allowed(registry.pipeline(&other).evaluate(input_for(&other)));
}

#[test]
fn a_pool_plugin_asking_for_more_than_the_operators_caps_is_refused_at_load() {
    let registry = registry();
    let mut pool = pool();
    pool.spec.pod = None;
    let asking = |timeout_millis, memory_limit_mib| PluginSpec {
        config_map: "deny-latest".into(),
        timeout_millis,
        memory_limit_mib,
        ..spec(Some(serde_json::json!({})), FailurePolicy::Fail)
    };
    let maps = BTreeMap::from([(
        "deny-latest".to_string(),
        config_map(
            "deny-latest",
            "default",
            &[("plugin.wasm", example("deny-latest"))],
        ),
    )]);
    pool.spec.plugins = vec![asking(None, Some(1024))];
    let report = registry.load_pool(&pool, &maps);
    let refused = "spec.plugins[0].memoryLimitMib: 1024 MiB is more than a pool plugin may ask \
                   for (at most 64 MiB, set by the operator's administrator as \
                   limits.maxPluginMemoryLimitMib in its hook configuration, Helm value \
                   hooks.limits.maxPluginMemoryLimitMib)";
    let problems: Vec<String> = report.problems().map(|p| p.message()).collect();
    assert_eq!(
        problems,
        [format!(
            "plugin \"deny-latest\" (ConfigMap deny-latest): {refused}; runs are denied until \
             it loads (failurePolicy: Fail)"
        )]
    );
    let condition = registry.pool_condition(&report);
    assert_eq!(
        (condition.status, condition.message.as_str()),
        (false, problems[0].as_str())
    );
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        denial.reasons,
        [format!(
            "pool plugin \"deny-latest\" failed: is not loaded: {refused}"
        )]
    );

    // Up to the caps it loads; a new version that asks for more leaves it in service.
    pool.spec.plugins = vec![asking(Some(1000), Some(64))];
    assert!(registry.load_pool(&pool, &maps).is_healthy());
    pool.spec.plugins = vec![asking(Some(10000), Some(64))];
    let report = registry.load_pool(&pool, &maps);
    let message = report.problems().next().unwrap().message();
    assert!(
        message.contains(
            "spec.plugins[0].timeoutMillis: 10000 ms is more than a pool plugin may ask for (at \
             most 1000 ms, set by the operator's administrator as limits.maxPluginTimeoutMillis \
             in its hook configuration, Helm value hooks.limits.maxPluginTimeoutMillis); the \
             previous version sha256:"
        ),
        "{message}"
    );
    allowed(registry.pipeline(&pool).evaluate(input_for(&pool)));

    // Cluster plugins are the administrator's own: not capped.
    let config = HookConfig::parse(
        "plugins:\n  - configMap: deny-latest\n    settings: {}\n    timeoutMillis: 10000\n    memoryLimitMib: 1024\n",
        "hooks.yaml",
    )
    .unwrap();
    assert!(registry.load_cluster(&config, &maps).is_healthy());

    // The administrator may raise the caps.
    let raised = unloaded_registry().with_pool_plugin_caps(PoolPluginCaps {
        timeout_millis: 10000,
        memory_limit_mib: 1024,
    });
    pool.spec.plugins = vec![asking(Some(10000), Some(1024))];
    assert!(raised.load_pool(&pool, &maps).is_healthy());
}

// ---- registry: no run is built before its hooks have loaded ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_before_any_hooks_loaded_is_denied_after_a_bounded_wait() {
    let registry = unloaded_registry();
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    let not_loaded = |reasons: &[String]| {
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        reasons[0].clone()
    };

    // The synchronous entry never waits: it denies at once.
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        (denial.stage, denial.hook.as_str()),
        (Stage::Invariants, "hooks-not-loaded")
    );
    assert_eq!(
        not_loaded(&denial.reasons),
        "the cluster-wide hooks have not loaded yet; the run is denied rather than started without them"
    );

    // The controller's entry waits (here at most 300 ms), then denies.
    let started = Instant::now();
    let denial = denied(
        registry
            .pipeline(&pool)
            .evaluate_blocking(input_for(&pool))
            .await,
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        not_loaded(&denial.reasons),
        "the cluster-wide hooks have not loaded yet (waited 300ms for them); the run is denied rather than started without them"
    );

    // The pool's own hooks count as much as the cluster-wide ones.
    registry.load_cluster(&HookConfig::default(), &BTreeMap::new());
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        not_loaded(&denial.reasons),
        "the hooks of WorkerPool default/test-workerpool have not loaded yet; the run is denied rather than started without them"
    );
    registry.load_pool(&pool, &maps);
    allowed(registry.pipeline(&pool).evaluate(input_for(&pool)));

    // A pool deleted and created again under the same name is another pool.
    let mut again = pool.clone();
    again.metadata.uid = Some("another-uid".into());
    assert!(matches!(
        registry.pipeline(&again).evaluate(input_for(&again)),
        Decision::Denied(d) if d.hook == "hooks-not-loaded"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_comes_before_the_hooks_load_waits_and_then_runs_them() {
    let registry = Arc::new(unloaded_registry().with_load_wait(Duration::from_secs(20)));
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    // Asked for before anything loaded, as when a run message beats the first load.
    let pipeline = registry.pipeline(&pool);
    let waiting = tokio::spawn({
        let input = input_for(&pool);
        async move { pipeline.evaluate_blocking(input).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the run must wait for the hooks");

    let config = HookConfig::parse(
        "policies:\n  - name: freeze\n    regoVersion: v1\n    rego: |\n      package spacelift\n      deny contains \"frozen\" if true\n",
        "hooks.yaml",
    )
    .unwrap();
    registry.load_cluster(&config, &BTreeMap::new());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the pool's hooks have not loaded yet"
    );
    let loading = registry.clone();
    let pool_to_load = pool.clone();
    tokio::task::spawn_blocking(move || loading.load_pool(&pool_to_load, &maps))
        .await
        .unwrap();

    // Not an empty pipeline: the hooks that loaded meanwhile decide.
    let denial = denied(
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        (
            denial.stage,
            denial.hook.as_str(),
            denial.reasons.as_slice()
        ),
        (
            Stage::ClusterPolicy,
            "freeze",
            ["frozen".to_string()].as_slice()
        )
    );
    assert_eq!(denial.trail[0].stage, Stage::PoolPolicy);
}

#[test]
fn an_unreadable_config_map_is_a_load_failure_that_names_the_field_and_namespace() {
    let registry = registry();
    let mut pool = pool();
    pool.spec.pod = None;
    pool.spec.plugins = vec![
        PluginSpec {
            config_map: "label-injector".into(),
            ..spec(Some(serde_json::json!({})), FailurePolicy::Ignore)
        },
        PluginSpec {
            config_map: "deny-latest".into(),
            ..spec(Some(serde_json::json!({})), FailurePolicy::Fail)
        },
    ];
    let fetched = FetchedConfigMaps {
        namespace: "default".into(),
        found: BTreeMap::from([(
            "label-injector".into(),
            config_map(
                "label-injector",
                "default",
                &[("plugin.wasm", example("label-injector"))],
            ),
        )]),
        unreadable: BTreeMap::from([(
            "deny-latest".into(),
            "Kubernetes API: service unavailable".into(),
        )]),
    };
    let report = registry.load_pool_from(&pool, &fetched);
    let problems: Vec<String> = report.problems().map(|p| p.message()).collect();
    assert_eq!(
        problems,
        [
            "plugin \"deny-latest\" (ConfigMap deny-latest): spec.plugins[1].configMap: cannot read \
             ConfigMap default/deny-latest: Kubernetes API: service unavailable; runs are denied until it \
             loads (failurePolicy: Fail)"
        ]
    );
    let condition = registry.pool_condition(&report);
    assert_eq!(
        (condition.status, condition.message.as_str()),
        (false, problems[0].as_str())
    );
    // The load completed: runs are built, and the plugin's failure policy decides.
    let denial = denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"deny-latest\" failed: is not loaded: spec.plugins[1].configMap: cannot read \
             ConfigMap default/deny-latest: Kubernetes API: service unavailable"
        ]
    );

    // Once readable, it loads; a later read failure keeps it in service.
    let mut fetched = fetched;
    fetched.unreadable.clear();
    fetched.found.insert(
        "deny-latest".into(),
        config_map(
            "deny-latest",
            "default",
            &[("plugin.wasm", example("deny-latest"))],
        ),
    );
    assert!(registry.load_pool_from(&pool, &fetched).is_healthy());
    fetched.found.remove("deny-latest");
    fetched
        .unreadable
        .insert("deny-latest".into(), "timed out".into());
    let report = registry.load_pool_from(&pool, &fetched);
    let message = report.problems().next().unwrap().message();
    assert!(
        message.contains("spec.plugins[1].configMap: cannot read ConfigMap default/deny-latest: timed out; the previous version sha256:"),
        "{message}"
    );
    allowed(registry.pipeline(&pool).evaluate(input_for(&pool)));
}

#[test]
fn cluster_wide_load_problems_show_on_every_pools_condition() {
    let registry = unloaded_registry();
    let (pool, maps) = pool_with_policy(SEED_POLICY);
    let report = registry.load_pool(&pool, &maps);
    assert!(report.is_healthy());
    let condition = registry.pool_condition(&report);
    assert_eq!(
        (
            condition.status,
            condition.reason,
            condition.message.as_str()
        ),
        (
            false,
            "HookLoadFailed",
            "the cluster-wide hooks have not loaded yet: the pool's runs wait for them, and are denied if they do not load"
        )
    );

    let config = HookConfig::parse(
        "plugins:\n  - configMap: missing\n    failurePolicy: Fail\n",
        "hooks.yaml",
    )
    .unwrap();
    registry.load_cluster(&config, &BTreeMap::new());
    let condition = registry.pool_condition(&report);
    assert_eq!(
        (condition.status, condition.message.as_str()),
        (
            false,
            "cluster-wide plugin \"missing\" (ConfigMap missing): ConfigMap missing was not found: create it or \
             fix the reference; runs are denied until it loads (failurePolicy: Fail)"
        )
    );

    registry.cluster_config_failed("hooks.yaml: plugins[0]: missing field `configMap`".into());
    let condition = registry.pool_condition(&report);
    assert!(
        condition.message.ends_with(
            "; the cluster-wide hook configuration cannot be loaded: hooks.yaml: plugins[0]: missing field \
             `configMap`; the cluster-wide hooks loaded before stay in service"
        ),
        "{}",
        condition.message
    );

    registry.load_cluster(&HookConfig::default(), &BTreeMap::new());
    let condition = registry.pool_condition(&report);
    assert_eq!(
        (condition.status, condition.message.as_str()),
        (true, "1 hooks loaded (1 of the pool, 0 cluster-wide)")
    );
}

#[test]
fn a_deleted_pools_hooks_and_metrics_are_forgotten() {
    let metrics = Arc::new(HookMetrics::new());
    let registry = workerpool_operator::hooks::HookRegistry::new(
        host(),
        metrics.clone(),
        Duration::from_millis(100),
    );
    registry.load_cluster(&HookConfig::default(), &BTreeMap::new());
    let (mut pool, maps) = pool_with_policy("package spacelift\ndeny contains \"no\" if true\n");
    pool.metadata.uid = Some("first".into());
    registry.load_pool(&pool, &maps);
    denied(registry.pipeline(&pool).evaluate(input_for(&pool)));
    let scope = "default/test-workerpool";
    let series = || {
        metrics
            .denials
            .with_label_values(&[
                scope,
                "poolPolicy",
                "test-workerpool-initialization-policy/initialization-policy.rego",
            ])
            .get()
    };
    assert_eq!(series(), 1);
    assert_eq!(
        registry.pools(),
        [(scope.to_string(), Some("first".to_string()))]
    );

    // Another pool of the same name has loaded since: its hooks stay.
    registry.forget_pool(scope, Some("older"));
    assert_eq!(registry.pools().len(), 1);

    registry.forget_pool(scope, Some("first"));
    assert!(registry.pools().is_empty());
    assert_eq!(series(), 0, "the pool's metric series went with it");
    assert!(matches!(
        registry.pipeline(&pool).evaluate(input_for(&pool)),
        Decision::Denied(d) if d.hook == "hooks-not-loaded"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_entry_runs_off_the_runtime() {
    let pipeline = pool_pipeline(vec![example_plugin(
        "deny-latest",
        serde_json::json!({}),
        FailurePolicy::Fail,
    )]);
    let decision = pipeline.evaluate_blocking(input()).await;
    assert!(matches!(decision, Decision::Allowed(_)), "{decision:?}");
}

#[test]
fn a_policy_pinned_to_the_wrong_syntax_says_so() {
    let err = workerpool_operator::hooks::Policy::compile(
        "seed",
        "seed.rego",
        SEED_POLICY,
        RegoVersion::V1,
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(err.to_string().contains("seed.rego:3"), "{err}");
    let entry = PolicyEntry::Broken {
        name: "seed".into(),
        reason: err.to_string(),
    };
    let mut pipeline = pool_pipeline(vec![]);
    pipeline.cluster_policies.push(entry);
    assert_eq!(
        denied(pipeline.evaluate(input())).stage,
        Stage::ClusterPolicy
    );
}

/// Numbers for docs/plugins.md: `cargo test --test hooks -- --ignored --nocapture measure`.
#[test]
#[ignore = "a measurement, not a test"]
fn measure() {
    hooks_support::measure();
}

/// Every example policy in policies/ compiles (v0 or v1, detected) and gives exactly the
/// `deny` messages its `<name>.cases.yaml` expects.
#[test]
fn policies_pass_their_cases() {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        input: serde_json::Value,
        deny: Vec<String>,
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rego") {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = workerpool_operator::hooks::Policy::compile(
            &file,
            &file,
            &text,
            RegoVersion::Auto,
            Duration::from_millis(500),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let cases_path = path.with_extension("cases.yaml");
        let cases: Vec<Case> = yaml_serde::from_str(
            &std::fs::read_to_string(&cases_path)
                .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display()));
        for case in cases {
            let mut got = policy
                .evaluate(&case.input)
                .unwrap_or_else(|e| panic!("{file}: {}: {e}", case.name));
            got.sort();
            let mut want = case.deny;
            want.sort();
            assert_eq!(got, want, "{file}: {}", case.name);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} cases");
}
