//! The seed's policy, the example plugins (Rust and Go) and policies, as users run them.

use std::time::Duration;

use crate::hooks_support::*;
use workerpool_operator::hooks::registry::pool_config_maps;
use workerpool_operator::hooks::{
    Decision, FailurePolicy, Outcome, PolicyLimits, RegoVersion, Stage, TRAIL_ANNOTATION,
};

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
        let policy = policies_with(PolicyLimits {
            timeout: Duration::from_millis(500),
            ..PolicyLimits::default()
        })
        .compile(&file, &file, &text, RegoVersion::Auto)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let cases_path = path.with_extension("cases.yaml");
        let cases: Vec<Case> = yaml_serde::from_str(
            &std::fs::read_to_string(&cases_path)
                .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display()));
        for case in cases {
            let mut got = policy
                .evaluate(&case.input.to_string())
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
