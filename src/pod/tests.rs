use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Volume};
use serde_json::json;

use super::*;
use crate::crd::{ANNOTATION_WORKERPOOL_NAME, WorkerSpec};
use crate::manifest;

const POOL_ULID: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";
const WORKER_ULID: &str = "01HPS6K4BNB7BPHCDHDWFAMJNV";
const RUN_ULID: &str = "01HN37WC3MCNE3CY9HAHWRF06K";
const LAUNCHER: &str = "public.ecr.aws/spacelift/launcher:d0a81de1085a7cc4f4561a776ab74a43d4497f6c";

fn fixture(name: &str) -> WorkerPool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seed")
        .join(format!("{name}.yaml"));
    manifest::load_workerpool(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn pool(spec: serde_json::Value) -> WorkerPool {
    let document = json!({
        "apiVersion": "workers.spacelift.io/v1beta1",
        "kind": "WorkerPool",
        "metadata": {"name": "test-pool", "namespace": "default"},
        "spec": spec,
    });
    manifest::workerpool_from_value("test", document).unwrap_or_else(|e| panic!("{e}"))
}

fn worker() -> Worker {
    Worker {
        metadata: ObjectMeta {
            name: Some(format!("test-pool-{}", WORKER_ULID.to_lowercase())),
            namespace: Some("default".into()),
            uid: Some("4b1f0b6e-3a56-4c1e-9a43-0d1f6f5b8c11".into()),
            labels: Some(BTreeMap::from([
                (LABEL_WORKERPOOL.to_string(), POOL_ULID.to_string()),
                (LABEL_ULID.to_string(), WORKER_ULID.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_WORKERPOOL_NAME.to_string(),
                "test-pool".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: WorkerSpec::default(),
        status: None,
    }
}

fn run() -> RunSchedule {
    RunSchedule {
        run_id: RUN_ULID.into(),
        stage: "preparing".into(),
        attempt: 2,
        runner_image: Some("public.ecr.aws/spacelift/runner-terraform:latest".into()),
        launcher_image: LAUNCHER.into(),
        ..RunSchedule::default()
    }
}

fn build(pool: &WorkerPool) -> Pod {
    build_pod(pool, &worker(), &run()).unwrap_or_else(|e| panic!("{e}"))
}

fn spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("pod has a spec")
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = spec(pod);
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Container, name: &str) -> Vec<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .map(|e| e.value.as_deref().unwrap_or_default())
        .collect()
}

fn mounts(container: &Container) -> Vec<(String, String)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

fn names(containers: &[Container]) -> Vec<&str> {
    containers.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn the_minimal_seed_pool_gets_the_documented_pod() {
    let pod = build(&fixture("create-a-workerpool"));
    assert_eq!(
        pod.metadata.name.as_deref(),
        Some("01hn37wc3mcne3cy9hahwrf06k-preparing-2")
    );
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        pod.metadata.labels,
        Some(BTreeMap::from([
            (LABEL_RUN_ID.to_string(), RUN_ULID.to_string()),
            (LABEL_WORKER.to_string(), WORKER_ULID.to_string()),
            (LABEL_WORKERPOOL.to_string(), POOL_ULID.to_string()),
        ]))
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str()
        ),
        (
            "workers.spacelift.io/v1beta1",
            "Worker",
            "test-pool-01hps6k4bnb7bphcdhdwfamjnv"
        )
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );

    let spec = spec(&pod);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.active_deadline_seconds, Some(4200));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    let security = spec.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1983), Some(1983))
    );
    assert_eq!(names(spec.init_containers.as_ref().unwrap()), ["init"]);
    assert_eq!(names(&spec.containers), ["launcher-grpc", "worker"]);

    let init = container(&pod, "init");
    assert_eq!(init.image.as_deref(), Some(LAUNCHER));
    assert_eq!(init.args, Some(vec!["init".to_string()]));
    let grpc = container(&pod, "launcher-grpc");
    assert_eq!(grpc.image.as_deref(), Some(LAUNCHER));
    let worker = container(&pod, "worker");
    assert_eq!(
        worker.image.as_deref(),
        Some("public.ecr.aws/spacelift/runner-terraform:latest")
    );
    assert_eq!(
        env(worker, "PATH"),
        ["/opt/spacelift/binaries:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    for c in [init, grpc, worker] {
        assert_eq!(env(c, "SPACELIFT_RUN_ULID"), [RUN_ULID], "{}", c.name);
        assert_eq!(
            c.security_context
                .as_ref()
                .and_then(|s| s.allow_privilege_escalation),
            Some(false)
        );
    }

    let workspace = ("workspace".to_string(), WORKSPACE_PATH.to_string());
    let cache = (
        "binaries-cache".to_string(),
        BINARIES_CACHE_PATH.to_string(),
    );
    let binaries = ("binaries".to_string(), BINARIES_PATH.to_string());
    let identity = (
        "launcher-identity".to_string(),
        "/opt/spacelift/identity".to_string(),
    );
    assert_eq!(
        mounts(init),
        [
            workspace.clone(),
            binaries.clone(),
            cache.clone(),
            identity.clone()
        ]
    );
    assert_eq!(mounts(grpc), vec![workspace.clone(), identity]);
    assert_eq!(mounts(worker), [workspace, binaries, cache]);
    let volumes: Vec<(&str, bool)> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v: &Volume| (v.name.as_str(), v.empty_dir.is_some()))
        .collect();
    assert_eq!(
        volumes,
        [
            ("binaries", true),
            ("workspace", true),
            ("binaries-cache", true),
            ("launcher-identity", false)
        ]
    );
}

#[test]
fn only_the_launcher_containers_get_the_worker_key_and_the_pool_token() {
    let mut scheduled = run();
    scheduled.launcher_endpoint = Some("https://10.213.0.1:8443".into());
    let pod = build_pod(&fixture("create-a-workerpool"), &worker(), &scheduled).unwrap();
    let identity = spec(&pod)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "launcher-identity")
        .and_then(|v| v.projected.clone())
        .expect("a projected identity volume");
    let sources: Vec<(String, String, String)> = identity
        .sources
        .iter()
        .flatten()
        .filter_map(|s| s.secret.as_ref())
        .flat_map(|secret| {
            secret
                .items
                .iter()
                .flatten()
                .map(|item| (secret.name.clone(), item.key.clone(), item.path.clone()))
        })
        .collect();
    assert_eq!(
        sources,
        [
            (
                "test-pool-01hps6k4bnb7bphcdhdwfamjnv".to_string(),
                "privateKey".to_string(),
                "worker.key".to_string()
            ),
            (
                "test-workerpool".to_string(),
                "token".to_string(),
                "pool.token".to_string()
            ),
        ]
    );
    for name in ["init", "launcher-grpc"] {
        let c = container(&pod, name);
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "launcher-identity")
            .unwrap_or_else(|| panic!("{name} mounts the identity"));
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(
            env(c, "SPACELIFT_LAUNCHER_ENDPOINT"),
            ["https://10.213.0.1:8443"]
        );
    }
    let worker = container(&pod, "worker");
    assert!(
        worker
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "launcher-identity"),
        "the runner's container never sees the worker key"
    );
    assert!(env(worker, "SPACELIFT_LAUNCHER_ENDPOINT").is_empty());
    // A pool without credentials (the seed's sidecar example) has no token to mount.
    let bare = build(&fixture("docker-daemon-sidecar"));
    let identity = spec(&bare)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "launcher-identity")
        .and_then(|v| v.projected.clone())
        .unwrap();
    assert_eq!(identity.sources.map(|s| s.len()), Some(1));
}

#[test]
fn resource_settings_apply_to_each_builtin_container() {
    let pod = build(&fixture("resource-usage-run-pods"));
    for name in ["init", "launcher-grpc", "worker"] {
        let resources = container(&pod, name).resources.as_ref().expect(name);
        let requests = resources.requests.as_ref().expect(name);
        assert_eq!(requests["cpu"].0, "500m", "{name}");
        assert_eq!(requests["memory"].0, "200Mi", "{name}");
    }
}

#[test]
fn the_workspace_volume_and_fs_group_of_the_seed_are_used() {
    let pod = build(&fixture("workspace-volume"));
    let spec = spec(&pod);
    let workspace = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "workspace")
        .unwrap();
    assert!(workspace.ephemeral.is_some() && workspace.empty_dir.is_none());
    let security = spec.security_context.as_ref().unwrap();
    assert_eq!(
        (
            security.fs_group,
            security.run_as_user,
            security.run_as_group
        ),
        (Some(1983), Some(1983), Some(1983))
    );
}

#[test]
fn a_workspace_volume_with_its_own_name_is_mounted_at_the_workspace_path() {
    let pod = build(&pool(json!({"pod": {
        "workspaceVolume": {"name": "scratch", "emptyDir": {"medium": "Memory"}},
        "binariesCacheVolume": {"name": "tools", "hostPath": {"path": "/var/cache/tools"}},
    }})));
    let worker = container(&pod, "worker");
    assert!(mounts(worker).contains(&("scratch".into(), WORKSPACE_PATH.into())));
    assert!(mounts(worker).contains(&("tools".into(), BINARIES_CACHE_PATH.into())));
}

#[test]
fn the_full_configuration_example_builds_with_its_sidecar_and_ignores_empty_strings() {
    let pool = fixture("configuration");
    let mut run = run();
    run.runner_image = Some("some.private.registry/runner:1".into());
    let pod = build_pod(&pool, &worker(), &run).unwrap();
    let spec = spec(&pod);
    assert_eq!(
        names(&spec.containers),
        ["launcher-grpc", "worker", "redis"]
    );
    // `launcherImage: ""`, `nodeName: ""`, `schedulerName: ""` and `runtimeClassName: ""`
    // are unset, not empty.
    assert_eq!(container(&pod, "init").image.as_deref(), Some(LAUNCHER));
    assert_eq!(spec.node_name, None);
    assert_eq!(spec.scheduler_name, None);
    assert_eq!(spec.runtime_class_name, None);
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("custom-service-account")
    );
    assert_eq!(spec.automount_service_account_token, Some(true));
    assert_eq!(spec.active_deadline_seconds, Some(4200));
}

#[test]
fn allowed_runner_image_hosts_refuse_other_registries_by_name() {
    let err = build_pod(&fixture("configuration"), &worker(), &run()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "runner image \"public.ecr.aws/spacelift/runner-terraform:latest\" is hosted on \"public.ecr.aws\", which is not in spec.allowedRunnerImageHosts [docker.io, some.private.registry]: add the host there or use an image from an allowed registry"
    );
    let mut hub = run();
    hub.runner_image = Some("hashicorp/terraform:1.9".into());
    assert!(build_pod(&fixture("configuration"), &worker(), &hub).is_ok());
}

#[test]
fn the_launcher_image_comes_from_the_run_unless_the_pool_pins_it() {
    let pinned = pool(json!({"pod": {"launcherImage": "registry.example.com/launcher:v1"}}));
    let pod = build(&pinned);
    for name in ["init", "launcher-grpc"] {
        assert_eq!(
            container(&pod, name).image.as_deref(),
            Some("registry.example.com/launcher:v1")
        );
    }
    let mut no_launcher = run();
    no_launcher.launcher_image = String::new();
    assert_eq!(
        build_pod(&pool(json!({})), &worker(), &no_launcher),
        Err(BuildError::NoLauncherImage)
    );
}

#[test]
fn the_runner_image_falls_back_to_default_runner_image() {
    let mut no_image = run();
    no_image.runner_image = None;
    let pod = build_pod(
        &pool(json!({"defaultRunnerImage": "public.ecr.aws/spacelift/runner-terraform:1.5"})),
        &worker(),
        &no_image,
    )
    .unwrap();
    assert_eq!(
        container(&pod, "worker").image.as_deref(),
        Some("public.ecr.aws/spacelift/runner-terraform:1.5")
    );
    assert_eq!(
        build_pod(&pool(json!({})), &worker(), &no_image),
        Err(BuildError::NoRunnerImage)
    );
}

#[test]
fn custom_binaries_path_comes_first_in_path() {
    let pod = build(&fixture("custom-binaries-path"));
    assert_eq!(
        env(container(&pod, "worker"), "PATH"),
        [
            "/bin:/opt/spacelift/binaries:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn pool_env_is_appended_and_wins_over_the_run_timeout() {
    let mut timed = run();
    timed.run_timeout_seconds = Some(600);
    timed.logs_timeout_seconds = Some(300);
    let pod = build_pod(&fixture("timeouts-run-timeout"), &worker(), &timed).unwrap();
    let worker = container(&pod, "worker");
    assert_eq!(env(worker, "SPACELIFT_LAUNCHER_RUN_TIMEOUT"), ["3600s"]);
    assert_eq!(env(worker, "SPACELIFT_LAUNCHER_LOGS_TIMEOUT"), ["300s"]);
    assert_eq!(spec(&pod).active_deadline_seconds, Some(3600));
    let last = worker.env.as_ref().unwrap().last().unwrap();
    assert_eq!(last.name, "SPACELIFT_LAUNCHER_RUN_TIMEOUT");
}

#[test]
fn the_initialization_policy_volume_mount_and_variable_reach_the_init_container() {
    let pod = build(&fixture("initialization-policies"));
    let init = container(&pod, "init");
    assert!(mounts(init).contains(&(
        "initialization-policy".into(),
        "/opt/spacelift/policies/initialization".into()
    )));
    assert_eq!(
        env(init, "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY"),
        ["/opt/spacelift/policies/initialization/initialization-policy.rego"]
    );
    let volume = spec(&pod)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "initialization-policy")
        .unwrap();
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("test-workerpool-initialization-policy")
    );
    assert!(
        env(
            container(&pod, "worker"),
            "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY"
        )
        .is_empty()
    );
}

#[test]
fn the_docker_sidecar_example_keeps_its_privileged_sidecar_and_worker_env() {
    let pod = build(&fixture("docker-daemon-sidecar"));
    let docker = container(&pod, "docker");
    assert_eq!(docker.image.as_deref(), Some("docker:dind"));
    assert_eq!(
        docker.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    assert_eq!(
        env(container(&pod, "worker"), "DOCKER_HOST"),
        ["tcp://localhost:2375"]
    );
}

#[test]
fn container_overrides_set_security_context_pull_policy_env_from_and_mounts() {
    let pod = build(&pool(json!({"pod": {
        "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "workerContainer": {
            "imagePullPolicy": "Always",
            "securityContext": {"runAsNonRoot": true},
            "envFrom": [{"secretRef": {"name": "cloud-creds"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/extra"}],
        },
        "grpcServerContainer": {"imagePullPolicy": "IfNotPresent"},
    }})));
    let worker = container(&pod, "worker");
    assert_eq!(worker.image_pull_policy.as_deref(), Some("Always"));
    let security = worker.security_context.as_ref().unwrap();
    assert_eq!(
        (
            security.run_as_non_root,
            security.allow_privilege_escalation
        ),
        (Some(true), None)
    );
    assert_eq!(
        worker.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "cloud-creds"
    );
    assert_eq!(
        mounts(worker).last(),
        Some(&("certs".to_string(), "/etc/ssl/extra".to_string()))
    );
    assert_eq!(
        container(&pod, "launcher-grpc")
            .image_pull_policy
            .as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(container(&pod, "init").image_pull_policy, None);
}

#[test]
fn lifecycle_hooks_and_a_shared_process_namespace_let_a_pre_stop_hook_reach_the_run() {
    // Controller v0.0.42: a preStop hook on worker or launcher-grpc, with the containers
    // sharing one process namespace, can signal the run when the node drains.
    let pre_stop =
        json!({"preStop": {"exec": {"command": ["/bin/sh", "-c", "pkill -INT tofu; sleep 20"]}}});
    let pod = build(&pool(json!({"pod": {
        "shareProcessNamespace": true,
        "workerContainer": {"lifecycle": pre_stop},
        "grpcServerContainer": {"lifecycle": {"postStart": {"exec": {"command": ["true"]}}}},
    }})));
    assert_eq!(spec(&pod).share_process_namespace, Some(true));
    let worker = container(&pod, "worker").lifecycle.as_ref().unwrap();
    assert_eq!(
        worker
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()[2],
        "pkill -INT tofu; sleep 20"
    );
    assert!(
        container(&pod, "launcher-grpc")
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .is_some()
    );
    assert_eq!(container(&pod, "init").lifecycle, None);
    // Unset, the Pod is as before.
    let plain = build(&pool(json!({})));
    assert_eq!(spec(&plain).share_process_namespace, None);
    assert_eq!(container(&plain, "worker").lifecycle, None);
}

#[test]
fn custom_init_containers_run_before_init() {
    let pod = build(&pool(json!({"pod": {"customInitContainers": [
        {"name": "fetch-certs", "image": "busybox"},
        {"name": "warm-cache", "image": "busybox"},
    ]}})));
    assert_eq!(
        names(spec(&pod).init_containers.as_ref().unwrap()),
        ["fetch-certs", "warm-cache", "init"]
    );
}

#[test]
fn every_scheduling_field_is_copied() {
    let pod = build(&pool(json!({"pod": {
        "serviceAccountName": "runner",
        "automountServiceAccountToken": false,
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"pool": "runs"},
        "nodeName": "node-1",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "schedulerName": "batch",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "runs", "effect": "NoSchedule"}],
        "hostAliases": [{"ip": "10.0.0.5", "hostnames": ["vcs.internal"]}],
        "dnsConfig": {"nameservers": ["10.0.0.53"]},
        "runtimeClassName": "gvisor",
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "activeDeadlineSeconds": 600,
        "terminationGracePeriodSeconds": 5,
    }})));
    let spec = serde_json::to_value(spec(&pod)).unwrap();
    let expect = [
        ("serviceAccountName", json!("runner")),
        ("automountServiceAccountToken", json!(false)),
        ("imagePullSecrets", json!([{"name": "regcred"}])),
        ("nodeSelector", json!({"pool": "runs"})),
        ("nodeName", json!("node-1")),
        ("schedulerName", json!("batch")),
        (
            "hostAliases",
            json!([{"ip": "10.0.0.5", "hostnames": ["vcs.internal"]}]),
        ),
        ("dnsConfig", json!({"nameservers": ["10.0.0.53"]})),
        ("runtimeClassName", json!("gvisor")),
        ("activeDeadlineSeconds", json!(600)),
        ("terminationGracePeriodSeconds", json!(5)),
    ];
    for (field, value) in expect {
        assert_eq!(spec[field], value, "{field}");
    }
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(spec["topologySpreadConstraints"][0]["topologyKey"], "zone");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "zone"
    );
}

#[test]
fn pool_labels_and_annotations_are_added_but_cannot_replace_the_run_labels() {
    let pod = build(&pool(json!({"pod": {
        "labels": {"team": "platform", LABEL_RUN_ID: "spoofed"},
        "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    }})));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "platform");
    assert_eq!(labels[LABEL_RUN_ID], RUN_ULID);
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
}

#[test]
fn clashing_names_are_reported_on_the_pool_field() {
    let cases = [
        (
            json!({"pod": {"volumes": [{"name": "workspace", "emptyDir": {}}]}}),
            "spec.pod.volumes[0]: volume name \"workspace\" is used twice in the run Pod: rename one of them",
        ),
        (
            json!({"pod": {"workspaceVolume": {"name": "binaries", "emptyDir": {}}}}),
            "spec.pod.workspaceVolume: volume name \"binaries\" is used twice in the run Pod: rename one of them",
        ),
        (
            json!({"pod": {"additionalSidecarContainers": [{"name": "worker", "image": "x"}]}}),
            "spec.pod.additionalSidecarContainers: container name \"worker\" is used twice in the run Pod (init, launcher-grpc and worker are reserved): rename it",
        ),
        (
            json!({"pod": {"customInitContainers": [{"name": "init", "image": "x"}]}}),
            "spec.pod.customInitContainers: container name \"init\" is used twice in the run Pod (init, launcher-grpc and worker are reserved): rename it",
        ),
    ];
    for (spec, want) in cases {
        let err = build_pod(&pool(spec), &worker(), &run()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

#[test]
fn bad_run_identities_are_refused() {
    type Change = fn(&mut RunSchedule);
    let cases: [(Change, BuildError); 4] = [
        (
            |r| r.run_id = "not-a-ulid".into(),
            BuildError::RunIdNotUlid("not-a-ulid".into()),
        ),
        (
            |r| r.stage = "plan ning".into(),
            BuildError::BadStage(check_stage("plan ning").unwrap_err()),
        ),
        (
            |r| r.stage = String::new(),
            BuildError::BadStage(check_stage("").unwrap_err()),
        ),
        (|r| r.attempt = 0, BuildError::ZeroAttempt),
    ];
    for (change, want) in cases {
        let mut bad = run();
        change(&mut bad);
        assert_eq!(build_pod(&pool(json!({})), &worker(), &bad), Err(want));
    }
    // The same rule as the backend link's, so `render` refuses what the operator would.
    let mut upper = run();
    upper.stage = "PLANNING".into();
    assert_eq!(
        pod_name(&upper).unwrap_err().to_string(),
        "the run's stage \"PLANNING\" must be 1-30 lowercase letters, digits or '-': it becomes part of the Pod name"
    );
}

#[test]
fn a_bad_runner_image_names_where_it_came_from() {
    let mut bad = run();
    bad.runner_image = Some("UPPER CASE".into());
    let err = build_pod(&pool(json!({})), &worker(), &bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the run's runnerImage is not usable: image \"UPPER CASE\""),
        "{err}"
    );
    bad.runner_image = None;
    let err = build_pod(&pool(json!({"defaultRunnerImage": "a b"})), &worker(), &bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.defaultRunnerImage is not usable:"),
        "{err}"
    );
}

#[test]
fn a_worker_without_identity_cannot_own_a_pod() {
    let mut unlabelled = worker();
    unlabelled.metadata.labels = None;
    assert_eq!(
        build_pod(&pool(json!({})), &unlabelled, &run())
            .unwrap_err()
            .to_string(),
        "Worker \"test-pool-01hps6k4bnb7bphcdhdwfamjnv\" has no workers.spacelift.io/workerpool label: it was not created by this operator"
    );
    let mut unsaved = worker();
    unsaved.metadata.uid = None;
    assert!(matches!(
        build_pod(&pool(json!({})), &unsaved, &run()),
        Err(BuildError::WorkerWithoutUid(_))
    ));
}

#[test]
fn the_builder_never_emits_duplicate_env_names() {
    let mut timed = run();
    timed.run_timeout_seconds = Some(60);
    let pool = pool(json!({"pod": {"workerContainer": {"env": [
        {"name": "SPACELIFT_LAUNCHER_RUN_TIMEOUT", "value": "90s"},
        {"name": "TF_LOG", "value": "debug"},
    ]}}}));
    let pod = build_pod(&pool, &worker(), &timed).unwrap_or_else(|e| panic!("{e}"));
    let worker = container(&pod, "worker");
    let all: &Vec<EnvVar> = worker.env.as_ref().unwrap();
    let mut seen: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before);
    assert_eq!(env(worker, "SPACELIFT_LAUNCHER_RUN_TIMEOUT"), ["90s"]);
}

#[test]
fn a_pool_may_not_take_the_operators_mounts_environment_or_key() {
    let cases = [
        (
            json!({"workerContainer": {"volumeMounts": [{"name": "x", "mountPath": "/opt/spacelift/workspace"}]}}),
            "spec.pod.workerContainer.volumeMounts[0].mountPath: \"/opt/spacelift/workspace\" is at or under /opt/spacelift/workspace, where the operator mounts the run's workspace in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        (
            json!({"initContainer": {"volumeMounts": [{"name": "x", "mountPath": "/opt/spacelift/identity/worker.key", "subPath": "k"}]}}),
            "spec.pod.initContainer.volumeMounts[0].mountPath: \"/opt/spacelift/identity/worker.key\" is at or under /opt/spacelift/identity, where the operator mounts the worker's key and the pool token in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        (
            json!({"grpcServerContainer": {"volumeMounts": [{"name": "x", "mountPath": "/opt/spacelift//binaries/"}]}}),
            "spec.pod.grpcServerContainer.volumeMounts[0].mountPath: \"/opt/spacelift//binaries/\" is at or under /opt/spacelift/binaries, where the operator mounts the run's binaries in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        (
            json!({"workerContainer": {"volumeMounts": [{"name": "launcher-identity", "mountPath": "/keys"}]}}),
            "spec.pod.workerContainer.volumeMounts[0].name: the volume \"launcher-identity\" holds the worker's private key, which only the operator's init and launcher-grpc containers mount: remove this mount",
        ),
        (
            json!({"additionalSidecarContainers": [{"name": "thief", "image": "busybox", "volumeMounts": [{"name": "launcher-identity", "mountPath": "/k"}]}]}),
            "spec.pod.additionalSidecarContainers[0].volumeMounts[0].name: the volume \"launcher-identity\" holds the worker's private key, which only the operator's init and launcher-grpc containers mount: remove this mount",
        ),
        (
            json!({"workerContainer": {"env": [{"name": "TF_LOG", "value": "1"}, {"name": "SPACELIFT_WORKER_ULID", "value": "01HPS6K4BNB7BPHCDHDWFAMJNW"}]}}),
            "spec.pod.workerContainer.env[1]: SPACELIFT_WORKER_ULID is set by the operator in every run Pod (the worker's identity): remove it from the WorkerPool",
        ),
        (
            json!({"initContainer": {"env": [{"name": "SPACELIFT_LAUNCHER_ENDPOINT", "value": "https://evil.example.com"}]}}),
            "spec.pod.initContainer.env[0]: SPACELIFT_LAUNCHER_ENDPOINT is set by the operator in every run Pod (where the backend sends the launcher): remove it from the WorkerPool",
        ),
        (
            json!({"workerContainer": {"env": [{"name": "PATH", "value": "/custom"}]}}),
            "spec.pod.workerContainer.env[0]: PATH is set by the operator in every run Pod (the PATH): remove it from the WorkerPool; spec.pod.customBinariesPath puts directories in front of the run's PATH",
        ),
        (
            json!({"additionalSidecarContainers": [{"name": "Redis_1", "image": "redis"}]}),
            "spec.pod.additionalSidecarContainers[0].name: \"Redis_1\" is not a valid container name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit): rename it",
        ),
        (
            json!({"volumes": [{"name": "a".repeat(64), "emptyDir": {}}]}),
            &format!(
                "spec.pod.volumes[0].name: \"{}\" is not a valid volume name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit): rename it",
                "a".repeat(64)
            ),
        ),
    ];
    for (template, want) in cases {
        let err = build_pod(&pool(json!({"pod": template})), &worker(), &run()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    // What stays allowed: mounts beside the built-in paths, the seed's launcher settings, and
    // a sidecar that reads the workspace.
    build(&pool(json!({"pod": {
        "initContainer": {
            "volumeMounts": [{"name": "p", "mountPath": "/opt/spacelift/policies/initialization"}],
            "env": [{"name": "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", "value": "/x"}],
        },
        "volumes": [{"name": "p", "configMap": {"name": "p"}}],
        "additionalSidecarContainers": [{"name": "reader", "image": "busybox",
            "volumeMounts": [{"name": "workspace", "mountPath": "/opt/spacelift/workspace"}]}],
    }})));
}
