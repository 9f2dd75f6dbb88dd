//! The registry: plugins and policies from ConfigMaps (plain or gzip), hot reload, load
//! reports, and no run built before its hooks have loaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hooks_support::*;
use workerpool_operator::hooks::config::PoolPluginCaps;
use workerpool_operator::hooks::registry::{FetchedConfigMaps, LoadStatus};
use workerpool_operator::hooks::{
    Decision, FailurePolicy, HookConfig, HookMetrics, PluginSpec, PolicyEntry, RegoVersion, Stage,
};

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
    let registry =
        workerpool_operator::hooks::HookRegistry::new(host(), policies(), metrics.clone());
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
    let err = policies()
        .compile("seed", "seed.rego", SEED_POLICY, RegoVersion::V1)
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
