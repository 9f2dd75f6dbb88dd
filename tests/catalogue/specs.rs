//! WorkerPool specs the apiserver stores but the operator must refuse: the operator's own
//! mounts, environment and key, names the Pod API would refuse, registries the pool does not
//! allow. Each pool registers (its spec is valid as far as the CRD goes) and its runs are
//! denied before any Pod exists, named on the Worker and in the backend's record of the run;
//! `render` says the same offline. A pool name too long for its Workers is refused by the
//! apiserver itself.

use crate::harness::{Catalogue, Seen, verdict};
use crate::stack::pool_yaml;
use crate::support;

struct SpecCase {
    name: &'static str,
    /// YAML under `spec:`, indented by two spaces.
    spec: &'static str,
    /// The runner image the backend asks for.
    image: &'static str,
    /// The hook `build`'s reason.
    message: &'static str,
}

const RUNNER: &str = crate::harness::RUNNER;

fn cases() -> Vec<SpecCase> {
    let case = |name, spec, message| SpecCase {
        name,
        spec,
        image: RUNNER,
        message,
    };
    vec![
        case(
            "a volume mounted over the workspace",
            "  pod:\n    volumes: [{name: data, emptyDir: {}}]\n    workerContainer:\n      volumeMounts: [{name: data, mountPath: /opt/spacelift/workspace}]\n",
            "spec.pod.workerContainer.volumeMounts[0].mountPath: \"/opt/spacelift/workspace\" is at or under /opt/spacelift/workspace, where the operator mounts the run's workspace in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        case(
            "a volume mounted over the worker's key",
            "  pod:\n    volumes: [{name: keys, secret: {secretName: mine}}]\n    initContainer:\n      volumeMounts: [{name: keys, mountPath: /opt/spacelift/identity/worker.key, subPath: key}]\n",
            "spec.pod.initContainer.volumeMounts[0].mountPath: \"/opt/spacelift/identity/worker.key\" is at or under /opt/spacelift/identity, where the operator mounts the worker's key and the pool token in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        case(
            "a volume mounted under the binaries cache",
            "  pod:\n    volumes: [{name: tools, emptyDir: {}}]\n    grpcServerContainer:\n      volumeMounts: [{name: tools, mountPath: /opt/spacelift/binaries_cache/tofu}]\n",
            "spec.pod.grpcServerContainer.volumeMounts[0].mountPath: \"/opt/spacelift/binaries_cache/tofu\" is at or under /opt/spacelift/binaries_cache, where the operator mounts the binaries cache in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)",
        ),
        case(
            "the worker's key mounted into the runner",
            "  pod:\n    workerContainer:\n      volumeMounts: [{name: launcher-identity, mountPath: /keys}]\n",
            "spec.pod.workerContainer.volumeMounts[0].name: the volume \"launcher-identity\" holds the worker's private key, which only the operator's init and launcher-grpc containers mount: remove this mount",
        ),
        case(
            "the worker's key mounted into a sidecar",
            "  pod:\n    additionalSidecarContainers:\n      - {name: thief, image: busybox, volumeMounts: [{name: launcher-identity, mountPath: /k}]}\n",
            "spec.pod.additionalSidecarContainers[0].volumeMounts[0].name: the volume \"launcher-identity\" holds the worker's private key, which only the operator's init and launcher-grpc containers mount: remove this mount",
        ),
        case(
            "the worker's identity set by the pool",
            "  pod:\n    workerContainer:\n      env: [{name: TF_LOG, value: debug}, {name: SPACELIFT_WORKER_ULID, value: 01HPS6K4BNB7BPHCDHDWFAMJNW}]\n",
            "spec.pod.workerContainer.env[1]: SPACELIFT_WORKER_ULID is set by the operator in every run Pod (the worker's identity): remove it from the WorkerPool",
        ),
        case(
            "the launcher endpoint set by the pool",
            "  pod:\n    initContainer:\n      env: [{name: SPACELIFT_LAUNCHER_ENDPOINT, value: \"https://collector.example.com\"}]\n",
            "spec.pod.initContainer.env[0]: SPACELIFT_LAUNCHER_ENDPOINT is set by the operator in every run Pod (where the backend sends the launcher): remove it from the WorkerPool",
        ),
        case(
            "the run's PATH set by the pool",
            "  pod:\n    workerContainer:\n      env: [{name: PATH, value: /usr/bin}]\n",
            "spec.pod.workerContainer.env[0]: PATH is set by the operator in every run Pod (the PATH): remove it from the WorkerPool; spec.pod.customBinariesPath puts directories in front of the run's PATH",
        ),
        case(
            "a sidecar name the Pod API refuses",
            "  pod:\n    additionalSidecarContainers: [{name: Redis_1, image: redis}]\n",
            "spec.pod.additionalSidecarContainers[0].name: \"Redis_1\" is not a valid container name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit): rename it",
        ),
        case(
            "a sidecar named like a built-in container",
            "  pod:\n    additionalSidecarContainers: [{name: worker, image: redis}]\n",
            "spec.pod.additionalSidecarContainers: container name \"worker\" is used twice in the run Pod (init, launcher-grpc and worker are reserved): rename it",
        ),
        case(
            "a volume named like a built-in volume",
            "  pod:\n    volumes: [{name: workspace, emptyDir: {}}]\n",
            "spec.pod.volumes[0]: volume name \"workspace\" is used twice in the run Pod: rename one of them",
        ),
        SpecCase {
            name: "a runner image from a registry the pool does not allow",
            spec: "  allowedRunnerImageHosts: [docker.io]\n",
            image: RUNNER,
            message: "runner image \"public.ecr.aws/spacelift/runner-terraform:1.5.7\" is hosted on \"public.ecr.aws\", which is not in spec.allowedRunnerImageHosts [docker.io]: add the host there or use an image from an allowed registry",
        },
        SpecCase {
            name: "a runner image the node could not pull",
            spec: "",
            image: "public.ecr.aws/spacelift/runner:.latest",
            message: "the run's runnerImage is not usable: image \"public.ecr.aws/spacelift/runner:.latest\" is not a valid reference: a tag is 1-128 letters, digits, '_', '.' or '-', and starts with a letter, digit or '_'",
        },
    ]
}

/// `render` for the case's pool: its stderr (the run is denied offline too).
fn render(cat: &Catalogue, yaml: &str) -> anyhow::Result<String> {
    let file = cat
        .stack
        .dir
        .path()
        .join(format!("{}.yaml", ulid::Ulid::generate()));
    std::fs::write(&file, yaml)?;
    let output = std::process::Command::new(crate::stack::operator_binary())
        .arg("render")
        .arg("--pool")
        .arg(&file)
        .arg("--run")
        .arg(support::repo_root().join("tests/fixtures/runs/preparing.json"))
        .output()?;
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn specs_the_operator_cannot_honour_deny_their_runs_naming_the_field() -> anyhow::Result<()> {
    let cat = Catalogue::new("cat-specs", &[]).await?;
    let cases = cases();
    let checks = async {
        let mut failures = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let pool = format!("spec-{i}");
            cat.stack.create_credentials(&pool, &pool)?;
            cat.stack.apply(&pool_yaml(&pool, &pool, 1, case.spec))?;
        }
        let mut runs = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let pool = format!("spec-{i}");
            cat.stack.wait_registered(&pool, 1).await?;
            runs.push(cat.stack.submit(&pool, case.image, &[]).await?.id);
        }
        for (i, (case, run)) in cases.iter().zip(&runs).enumerate() {
            let pool = format!("spec-{i}");
            let reason = format!("build: {}", case.message);
            for seen in [
                Seen::Backend("denied", reason.clone()),
                Seen::WorkerEvent("RunDenied", format!("run {{pod}} denied: {reason}")),
            ] {
                if let Err(err) = cat.check(&pool, run, &seen).await {
                    failures.push(format!("{}: {err:#}", case.name));
                }
            }
            // A runner image comes from the backend's run, not the pool: render's fixture run
            // names another one, so only the pool's own fields are checked offline.
            if case.message.starts_with("spec.pod.") {
                let stderr = render(&cat, &pool_yaml(&pool, &pool, 1, case.spec))?;
                if !stderr.contains(case.message) {
                    failures.push(format!("{}: render said {stderr:?}", case.name));
                }
            }
        }
        // Too long for its Workers' names: the apiserver refuses the pool, and so does render.
        let long = "p".repeat(210);
        let yaml = pool_yaml(&long, "bystander", 1, "");
        let applied = cat
            .stack
            .ns
            .kubectl_output(["apply", "--server-side", "-f", "-"], Some(&yaml))?;
        let message = "a WorkerPool name is at most 209 characters: its Workers are named <pool>-<worker ULID> (27 more) and events about them add 17, within Kubernetes' 253; choose a shorter name";
        if !applied.stderr.contains(message) {
            failures.push(format!(
                "a pool name too long: kubectl apply said {:?}",
                applied.stderr
            ));
        }
        if !render(&cat, &yaml)?.contains(message) {
            failures.push("a pool name too long: render accepted it".into());
        }
        verdict("WorkerPool spec", cases.len() + 1, failures)
    };
    cat.alongside(checks).await?;
    cat.end().await
}
