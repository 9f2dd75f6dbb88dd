//! Hostile plugins and policies: each asserts the exact text a user sees, the hook metrics it
//! moves, and that the next good run is unaffected.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::hooks_support::*;
use workerpool_operator::hooks::registry::LoadStatus;
use workerpool_operator::hooks::{FailurePolicy, Outcome, Plugin, Stage};

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
            "pool plugin \"spin\" failed: timed out after 100 ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis)"
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
            "pool plugin \"hog\" failed: exceeded its memory limit of 64 MiB (it asked for 64.1 MiB; raise memoryLimitMib if it needs more, for a pool plugin up to the operator's limits.maxPluginMemoryLimitMib)"
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
            "pool plugin \"spin\" failed: timed out after 100 ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis) (failurePolicy: Ignore)"
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
