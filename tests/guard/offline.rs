//! The guard in the operator's pipeline, without a cluster: the seed's pools under each level,
//! a pool plugin that widens the Pod, the image-host floor, `nodeName`, and `render`.

use std::process::Command;

use workerpool_operator::guard::{Level, RunPodGuard};
use workerpool_operator::hooks::{Decision, GUARD_HOOK, Stage};

use crate::support::repo_root as root;
use crate::{decide, guard, pool, reasons, run, widen};

/// Every WorkerPool of the seed; `initialization-policies-configmap` is the ConfigMap that goes
/// with `initialization-policies`.
const SEEDS: [&str; 11] = [
    "configuration",
    "create-a-workerpool",
    "custom-binaries-path",
    "docker-daemon-sidecar",
    "initialization-policies",
    "inspecting-successful-run-pods",
    "resource-usage-run-pods",
    "timeouts-logs-timeout",
    "timeouts-run-timeout",
    "vcs-agents",
    "workspace-volume",
];

const DOCKER_REFUSED: &str = "guard baseline: spec.containers[docker].securityContext.privileged is true (from spec.pod.additionalSidecarContainers[0]): privileged containers are not allowed at level baseline; ask your cluster admin for level privileged in namespace default";

fn seed(name: &str) -> workerpool_operator::crd::WorkerPool {
    pool(&format!("tests/fixtures/seed/{name}.yaml"))
}

/// A run the seed pool `name` accepts: the configuration example allows runner images from
/// docker.io and some.private.registry only.
fn run_for(name: &str) -> workerpool_operator::protocol::RunSchedule {
    let mut run = run();
    if name == "configuration" {
        run.runner_image = Some("docker.io/spacelift/runner-terraform:1.5.7".into());
    }
    run
}

#[test]
fn every_seed_pool_meets_the_default_guard_but_the_docker_sidecar_which_needs_privileged() {
    let found: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/seed"))
        .expect("the seed fixtures")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(String::from)
        })
        .filter(|name| name != "initialization-policies-configmap")
        .collect();
    assert_eq!(
        found.len(),
        SEEDS.len(),
        "a seed fixture is missing here: {found:?}"
    );
    for name in SEEDS {
        let pool = seed(name);
        let run = run_for(name);
        let default = decide(&pool, &run, Vec::new(), RunPodGuard::default());
        let privileged = decide(&pool, &run, Vec::new(), guard("level: privileged"));
        let restricted = decide(&pool, &run, Vec::new(), guard("level: restricted"));
        assert!(
            matches!(privileged, Decision::Allowed(_)),
            "{name} at privileged"
        );
        assert!(
            matches!(restricted, Decision::Denied(_)),
            "{name} at restricted: its Pod keeps the operator's defaults, which do not drop capabilities"
        );
        if name == "docker-daemon-sidecar" {
            let Decision::Denied(denial) = &default else {
                panic!("the docker daemon's privileged sidecar passed baseline");
            };
            assert_eq!(
                (denial.stage, denial.hook.as_str()),
                (Stage::Guard, GUARD_HOOK)
            );
            assert_eq!(denial.reasons, [DOCKER_REFUSED]);
        } else {
            assert!(
                matches!(default, Decision::Allowed(_)),
                "{name}: {:?}",
                reasons(&default)
            );
        }
    }
    // The documented value for the docker sidecar: its namespace at privileged.
    let docker = decide(
        &seed("docker-daemon-sidecar"),
        &run(),
        Vec::new(),
        guard("namespaces:\n  default:\n    level: privileged\n"),
    );
    assert!(matches!(docker, Decision::Allowed(_)));
}

#[test]
fn a_pool_configured_as_documented_meets_restricted() {
    let pool = pool("tests/fixtures/guard/restricted.yaml");
    let decision = decide(&pool, &run(), Vec::new(), guard("level: restricted"));
    assert!(matches!(decision, Decision::Allowed(_)), "{:?}", decision);
    // Without the pool's settings the same Pod is refused, and every reason says what to set.
    let plain = decide(
        &seed("create-a-workerpool"),
        &run(),
        Vec::new(),
        guard("level: restricted"),
    );
    let reasons = reasons(&plain);
    for want in [
        "guard restricted: spec.containers[worker].securityContext.runAsNonRoot is not set, nor spec.securityContext.runAsNonRoot (from spec.pod.workerContainer.securityContext): containers must run as non-root (runAsNonRoot: true) at level restricted; ask your cluster admin for level baseline in namespace default",
        "guard restricted: spec.initContainers[init].securityContext.capabilities.drop does not include \"ALL\" (from spec.pod.initContainer.securityContext): containers must drop ALL capabilities and may add only NET_BIND_SERVICE at level restricted; ask your cluster admin for level baseline in namespace default",
        "guard restricted: spec.containers[launcher-grpc].securityContext.seccompProfile is not set, nor spec.securityContext.seccompProfile (from spec.pod.grpcServerContainer.securityContext): the seccomp profile must be RuntimeDefault or Localhost at level restricted; ask your cluster admin for level baseline in namespace default",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "missing {want}\nin {reasons:#?}"
        );
    }
}

#[test]
fn a_pool_plugin_cannot_widen_the_pod_past_the_guard() {
    let mut pool = seed("create-a-workerpool");
    pool.spec.allowed_runner_image_hosts = Some(vec!["public.ecr.aws".into()]);
    let admin = "serviceAccounts: [default, runner]\n";
    let cases = [
        (
            "privileged-sidecar",
            "guard baseline: spec.containers[escape].securityContext.privileged is true (from pool plugin \"widen\"): privileged containers are not allowed at level baseline; ask your cluster admin for level privileged in namespace default",
        ),
        (
            "host-path",
            "guard baseline: spec.volumes[host].hostPath is set (from pool plugin \"widen\"): hostPath volumes are not allowed at level baseline; ask your cluster admin for level privileged in namespace default",
        ),
        (
            "all-image-hosts",
            "guard allowedImageHosts: allowedRunnerImageHosts is empty (from pool plugin \"widen\"): a hook may narrow the runner image hosts, but an empty list from a hook never allows every registry; leave allowedRunnerImageHosts out of the hook's answer to keep the list as it was",
        ),
        (
            "service-account",
            "guard serviceAccounts: spec.serviceAccountName is \"admin\" (from pool plugin \"widen\"): run Pods in namespace default may run only as [default, runner]; ask your cluster admin to allow \"admin\" in serviceAccounts",
        ),
        (
            "node-name",
            "guard nodeName: spec.nodeName is \"control-plane\" (from pool plugin \"widen\"): a nodeName skips the scheduler and the node's taints and is not allowed in namespace default; use nodeSelector or affinity, or ask your cluster admin for allowNodeName",
        ),
    ];
    for (action, want) in cases {
        let decision = decide(&pool, &run(), vec![widen(&[action])], guard(admin));
        assert_eq!(reasons(&decision), [want], "{action}");
    }
    // All at once: every reason is given, not just the first.
    let all: Vec<&str> = cases.iter().map(|(a, _)| *a).collect();
    let decision = decide(&pool, &run(), vec![widen(&all)], guard(admin));
    assert_eq!(reasons(&decision), cases.map(|(_, want)| want.to_string()));
    // The plugin itself works: at privileged, with the admin's consent, the Pod passes.
    let consent = "level: privileged\nallowNodeName: true\nserviceAccounts: [\"*\"]\n";
    let widening: Vec<&str> = all
        .iter()
        .copied()
        .filter(|a| *a != "all-image-hosts")
        .collect();
    let widened = decide(&pool, &run(), vec![widen(&widening)], guard(consent));
    assert!(
        matches!(widened, Decision::Allowed(_)),
        "{:?}",
        reasons(&widened)
    );
}

#[test]
fn the_image_host_floor_covers_every_container_and_the_pool_list_only_narrows_it() {
    let floor = guard("allowedImageHosts: [public.ecr.aws]\n");
    // The launcher (init, launcher-grpc) and the runner come from public.ecr.aws: allowed.
    let allowed = decide(
        &seed("create-a-workerpool"),
        &run(),
        Vec::new(),
        floor.clone(),
    );
    assert!(
        matches!(allowed, Decision::Allowed(_)),
        "{:?}",
        reasons(&allowed)
    );
    // The configuration example's redis sidecar comes from Docker Hub.
    let mut configuration = seed("configuration");
    configuration.spec.allowed_runner_image_hosts = None;
    let refused = reasons(&decide(&configuration, &run(), Vec::new(), floor.clone()));
    assert_eq!(
        refused,
        [
            "guard allowedImageHosts: spec.containers[redis].image \"redis\" (from spec.pod.additionalSidecarContainers[0]) is hosted on \"docker.io\", and images may come only from [public.ecr.aws] in namespace default; use an image from one of those registries, or ask your cluster admin to add the host to allowedImageHosts"
        ]
    );
    // A pool that allows docker.io for its runner does not widen the floor.
    let mut pool = seed("create-a-workerpool");
    pool.spec.allowed_runner_image_hosts = Some(vec!["docker.io".into(), "public.ecr.aws".into()]);
    let mut hub = run();
    hub.runner_image = Some("ubuntu:24.04".into());
    let refused = reasons(&decide(&pool, &hub, Vec::new(), floor.clone()));
    assert_eq!(
        refused,
        [
            "guard allowedImageHosts: spec.containers[worker].image \"ubuntu:24.04\" (from the run's runnerImage) is hosted on \"docker.io\", and images may come only from [public.ecr.aws] in namespace default; use an image from one of those registries, or ask your cluster admin to add the host to allowedImageHosts"
        ]
    );
    // The launcher image, which the backend chooses, is held to the floor as well.
    let mut elsewhere = run();
    elsewhere.launcher_image = "ghcr.io/someone/launcher:1".into();
    let refused = reasons(&decide(
        &seed("create-a-workerpool"),
        &elsewhere,
        Vec::new(),
        floor,
    ));
    assert_eq!(refused.len(), 2, "init and launcher-grpc: {refused:#?}");
    assert!(refused[0].starts_with("guard allowedImageHosts: spec.initContainers[init].image \"ghcr.io/someone/launcher:1\" (from the run's launcherImage) is hosted on \"ghcr.io\""), "{}", refused[0]);
}

#[test]
fn a_pools_node_name_is_refused_unless_its_namespace_allows_it() {
    let mut pool = seed("create-a-workerpool");
    pool.spec.pod.get_or_insert_with(Default::default).node_name = Some("node-1".into());
    let refused = reasons(&decide(&pool, &run(), Vec::new(), RunPodGuard::default()));
    assert_eq!(
        refused,
        [
            "guard nodeName: spec.nodeName is \"node-1\" (from spec.pod.nodeName): a nodeName skips the scheduler and the node's taints and is not allowed in namespace default; use nodeSelector or affinity, or ask your cluster admin for allowNodeName"
        ]
    );
    let allowed = guard("namespaces:\n  default:\n    allowNodeName: true\n");
    assert!(matches!(
        decide(&pool, &run(), Vec::new(), allowed),
        Decision::Allowed(_)
    ));
    assert_eq!(
        guard("level: privileged").rules("default").level,
        Level::Privileged
    );
}

#[test]
fn render_enforces_the_guard_and_its_level_flag_chooses_another() {
    let operator = env!("CARGO_BIN_EXE_workerpool-operator");
    let docker = root().join("tests/fixtures/seed/docker-daemon-sidecar.yaml");
    let run = root().join("tests/fixtures/runs/preparing.json");
    let render = |extra: &[&str]| {
        Command::new(operator)
            .arg("render")
            .arg("--pool")
            .arg(&docker)
            .arg("--run")
            .arg(&run)
            .args(extra)
            .output()
            .expect("render runs")
    };
    let refused = render(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(DOCKER_REFUSED), "{stderr}");
    let allowed = render(&["--guard-level", "privileged"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("privileged: true"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("guard.yaml");
    std::fs::write(&file, "namespaces:\n  default:\n    level: privileged\n").expect("write");
    let by_file = render(&["--guard", file.to_str().unwrap_or_default()]);
    assert!(
        by_file.status.success(),
        "{}",
        String::from_utf8_lossy(&by_file.stderr)
    );
    let bad = render(&["--guard-level", "strict"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("use privileged, baseline or restricted")
    );
}
