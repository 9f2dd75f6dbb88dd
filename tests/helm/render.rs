//! What the chart renders, checked without a cluster: lint, the Deployment, RBAC, metrics,
//! hooks, CRDs, and the values it refuses.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::chart::*;
use crate::support;

/// The value sets every test of this file and the server-side dry-run go through.
pub fn value_sets(watched: &[&str]) -> Vec<(&'static str, Vec<String>)> {
    let examples = examples_values().display().to_string();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("default", vec![]),
        (
            "namespaced",
            s(&[
                "--set",
                &format!("controllerManager.namespaces={{{}}}", watched.join(",")),
            ]),
        ),
        (
            "metrics-secure",
            s(&["--set", "metricsService.enabled=true"]),
        ),
        (
            "metrics-plain",
            s(&[
                "--set",
                "metricsService.enabled=true",
                "--set",
                "metricsService.secure=false",
            ]),
        ),
        ("examples", s(&["-f", &examples])),
        (
            "everything",
            s(&[
                "--set",
                &format!("controllerManager.namespaces={{{}}}", watched.join(",")),
                "--set",
                "metricsService.enabled=true",
                "--set",
                "metricsService.certSecret=operator-metrics-tls",
                "--set",
                "pdb.enabled=true",
                "--set",
                "controllerManager.pdb.enabled=true",
                "--set",
                "controllerManager.replicas=2",
                "--set",
                "controllerManager.nodeSelector.pool=system",
                "--set",
                "controllerManager.tolerations[0].key=dedicated",
                "--set",
                "controllerManager.tolerations[0].operator=Exists",
                "--set",
                "controllerManager.imagePullSecrets[0].name=registry",
                "--set",
                "controllerManager.manager.extraEnv[0].name=RUST_BACKTRACE",
                "--set-string",
                "controllerManager.manager.extraEnv[0].value=1",
                "--set-string",
                r"controllerManager.podAnnotations.karpenter\.sh/do-not-disrupt=true",
                "--set",
                "controllerManager.serviceAccount.annotations.team=platform",
            ]),
        ),
    ]
}

#[test]
fn chart_crds_are_the_generated_crds() -> anyhow::Result<()> {
    let generated = support::repo_root().join("crds");
    let chart = chart_dir().join("files/crds");
    let names = |dir: &std::path::Path| -> anyhow::Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect())
    };
    assert_eq!(
        names(&generated)?,
        names(&chart)?,
        "charts/workerpool-operator/files/crds must hold exactly the files of crds/"
    );
    for file in names(&generated)? {
        let a = std::fs::read(generated.join(&file))?;
        let b = std::fs::read(chart.join(&file))?;
        assert!(
            a == b,
            "charts/workerpool-operator/files/crds/{file} differs from crds/{file}: \
             run `cp crds/*.yaml charts/workerpool-operator/files/crds/`"
        );
    }
    Ok(())
}

#[test]
fn chart_app_version_is_the_crate_version() -> anyhow::Result<()> {
    let chart: Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let rendering = render(&[])?;
    assert_eq!(
        rendering.manager()?["image"],
        format!(
            "ghcr.io/workerpool-operator/workerpool-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    Ok(())
}

#[test]
fn lint_strict_passes_for_every_value_set() -> anyhow::Result<()> {
    let chart = chart_dir();
    for (name, args) in value_sets(&["team-a", "team-b"]) {
        let mut all = vec![
            "lint".to_string(),
            "--strict".into(),
            chart.display().to_string(),
        ];
        all.extend(args);
        let out = helm_offline(&all)?;
        assert!(
            out.success,
            "helm lint --strict ({name}) failed:\n{}{}",
            out.stdout, out.stderr
        );
        // Every set also renders.
        let args: Vec<&str> = all[3..].iter().map(String::as_str).collect();
        let rendering = render(&args)?;
        assert!(rendering.deployment().is_ok(), "{name}: no Deployment");
    }
    Ok(())
}

#[test]
fn the_operator_pod_is_hardened_and_sized_as_in_the_seed() -> anyhow::Result<()> {
    let r = render(&[])?;
    let pod = &r.deployment()?["spec"]["template"]["spec"];
    let manager = r.manager()?;
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &manager["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        manager["resources"]["requests"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(manager["resources"]["limits"], json!({"memory": "128Mi"}));
    // /tmp is writable (metrics certificate), through an emptyDir.
    let mounts = manager["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/tmp" && m["name"] == "tmp")
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "tmp" && v["emptyDir"].is_object())
    );
    // Probes on 8081.
    let health = manager["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "health")
        .unwrap();
    assert_eq!(health["containerPort"], 8081);
    assert_eq!(
        manager["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        manager["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );
    // The namespace for the leader Lease, from the downward API.
    assert_eq!(
        manager["env"][0],
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    );
    assert_eq!(manager["command"], json!(["/workerpool-operator"]));
    assert_eq!(
        r.args()?,
        [
            "run",
            "--health-probe-bind-address=:8081",
            "--leader-elect",
            "--leader-election-id=wpo-workerpool-operator-leader",
            "--hook-config=/etc/workerpool-operator/hooks.yaml",
            "--run-pod-guard=/etc/workerpool-operator/run-pod-guard.yaml",
            "--plugin-cache-dir=/var/cache/workerpool-operator",
            "--plugin-cache-max-mib=192",
            "--log-format=json",
            "--log-level=info",
        ]
    );
    // Metrics are off by default: no port, no Service, no review rights.
    assert!(!r.has("Service", "-metrics-service"));
    assert!(!r.has("ClusterRole", "-metrics-auth-role"));
    assert_eq!(
        pod["serviceAccountName"],
        "wpo-workerpool-operator-controller-manager"
    );
    Ok(())
}

/// The seed's "Autoscaling" flags, split into arguments the way a shell does it.
const SEED_AUTOSCALING_FLAGS: &str = r#"--set-string controllerManager.podAnnotations."karpenter\.sh/do-not-disrupt"="true" --set-string controllerManager.podAnnotations."cluster-autoscaler\.kubernetes\.io/safe-to-evict"="false" --set-string controllerManager.podAnnotations."autopilot\.gke\.io/priority"="high""#;

fn shell_words(line: &str) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf '%s\\0' {line}")])
        .output()?;
    anyhow::ensure!(out.status.success(), "sh could not split {line}");
    Ok(String::from_utf8(out.stdout)?
        .split_terminator('\0')
        .map(str::to_owned)
        .collect())
}

#[test]
fn the_seed_autoscaler_annotations_are_settable() -> anyhow::Result<()> {
    let args = shell_words(SEED_AUTOSCALING_FLAGS)?;
    assert_eq!(args.len(), 6, "{args:?}");
    let r = render(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let annotations = &r.deployment()?["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
    assert_eq!(
        annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    assert_eq!(annotations["autopilot.gke.io/priority"], "high");
    Ok(())
}

/// The manager rules of the RBAC table in docs/helm.md, as sorted (group, resource, verb)
/// triples. A row with an empty group or resource cell continues the one above.
fn documented_manager_triples() -> anyhow::Result<Vec<(String, String, String)>> {
    let doc = std::fs::read_to_string(support::repo_root().join("docs/helm.md"))?;
    let table = doc
        .split("## RBAC")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("docs/helm.md has no RBAC section"))?;
    let (mut group, mut resource) = (String::new(), String::new());
    let mut triples = Vec::new();
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with("| ---"))
        .skip(1)
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 5 {
            break;
        }
        if !cells[1].is_empty() {
            group = cells[1].trim_end_matches(" (core)").replace("\"\"", "");
        }
        if !cells[2].is_empty() {
            resource = cells[2].to_string();
        }
        if ["workers.spacelift.io", "", "events.k8s.io"].contains(&group.as_str()) {
            for verb in cells[3].split(", ") {
                triples.push((group.clone(), resource.clone(), verb.to_string()));
            }
        }
    }
    triples.sort();
    Ok(triples)
}

/// The Deployment's volume `name` and the manager's mount of it.
fn volume_and_mount(r: &Rendering, name: &str) -> anyhow::Result<(Option<Value>, Option<Value>)> {
    let find = |list: &Value| {
        list.as_array()
            .and_then(|l| l.iter().find(|v| v["name"] == name))
            .cloned()
    };
    let pod = &r.deployment()?["spec"]["template"]["spec"];
    Ok((find(&pod["volumes"]), find(&r.manager()?["volumeMounts"])))
}

#[test]
fn compiled_plugins_have_a_volume_of_their_own_and_are_kept_below_its_size() -> anyhow::Result<()> {
    let r = render(&[])?;
    let (volume, mount) = volume_and_mount(&r, "plugin-cache")?;
    assert_eq!(
        volume,
        Some(json!({"name": "plugin-cache", "emptyDir": {"sizeLimit": "256Mi"}}))
    );
    assert_eq!(
        mount,
        Some(json!({"name": "plugin-cache", "mountPath": "/var/cache/workerpool-operator"}))
    );
    let args = r.args()?;
    assert!(
        args.contains(&"--plugin-cache-dir=/var/cache/workerpool-operator".to_string())
            && args.contains(&"--plugin-cache-max-mib=192".to_string()),
        "{args:?}"
    );
    // /tmp stays small: the cache is not in it.
    let (tmp, _) = volume_and_mount(&r, "tmp")?;
    assert_eq!(tmp.unwrap()["emptyDir"]["sizeLimit"], "16Mi");

    // The operator's limit follows the volume's: 3/4 of it.
    let r = render(&["--set", "controllerManager.pluginCache.sizeLimit=1Gi"])?;
    assert_eq!(
        volume_and_mount(&r, "plugin-cache")?.0.unwrap()["emptyDir"]["sizeLimit"],
        "1Gi"
    );
    assert!(
        r.args()?
            .contains(&"--plugin-cache-max-mib=768".to_string())
    );
    let r = render(&["--set", "controllerManager.pluginCache.sizeLimit=64Mi"])?;
    assert!(r.args()?.contains(&"--plugin-cache-max-mib=48".to_string()));

    // Off: compiled plugins stay in memory, and there is no volume.
    let r = render(&["--set", "controllerManager.pluginCache.enabled=false"])?;
    assert_eq!(volume_and_mount(&r, "plugin-cache")?, (None, None));
    let args = r.args()?;
    assert!(
        args.contains(&"--plugin-cache-dir=".to_string())
            && !args.iter().any(|a| a.starts_with("--plugin-cache-max-mib")),
        "{args:?}"
    );

    let err = render_error(&["--set", "controllerManager.pluginCache.sizeLimit=2Mi"])?;
    assert!(
        err.contains(
            "controllerManager.pluginCache.sizeLimit: 2Mi is too small for compiled plugins"
        ),
        "{err}"
    );
    let err = render_error(&["--set", "controllerManager.pluginCache.sizeLimit=256M"])?;
    assert!(err.contains("sizeLimit"), "{err}");
    Ok(())
}

#[test]
fn changing_the_hook_limits_rolls_the_operator_pod() -> anyhow::Result<()> {
    let checksum = |args: &[&str]| render(args)?.pod_annotation("checksum/hook-limits");
    let default = checksum(&[])?;
    assert_eq!(default.len(), 64, "{default:?}");
    assert_ne!(
        checksum(&["--set", "hooks.limits.pluginMemoryLimitMib=32"])?,
        default
    );
    // Plugins reload without a restart, so adding one leaves the Pod alone.
    assert_eq!(
        checksum(&[
            "--set",
            "hooks.plugins[0].name=p",
            "--set",
            "hooks.plugins[0].configMap=p"
        ])?,
        default
    );
    Ok(())
}

#[test]
fn rbac_grants_exactly_the_documented_verbs() -> anyhow::Result<()> {
    assert_eq!(
        documented_manager_triples()?,
        manager_triples(),
        "docs/helm.md"
    );
    let r = render(&[])?;
    assert_eq!(
        rule_triples(r.get("ClusterRole", "-manager-role")?),
        manager_triples()
    );
    let binding = r.get("ClusterRoleBinding", "-manager-rolebinding")?;
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "wpo-workerpool-operator-controller-manager", "namespace": "workerpool-system"}])
    );
    let leader = r.get("Role", "-leader-election-role")?;
    assert_eq!(leader["metadata"]["namespace"], "workerpool-system");
    let triples = rule_triples(leader);
    let lease = |r: &str, v: &str| {
        (
            "coordination.k8s.io".to_string(),
            r.to_string(),
            v.to_string(),
        )
    };
    assert_eq!(
        triples,
        vec![
            lease("leases", "create"),
            lease("leases#wpo-workerpool-operator-leader", "get"),
            lease("leases#wpo-workerpool-operator-leader", "update"),
        ]
    );
    // Nothing namespaced beyond leader election in cluster mode.
    assert_eq!(r.of_kind("Role").len(), 1, "{}", r.summary());
    Ok(())
}

#[test]
fn namespaced_mode_uses_one_role_per_namespace_and_no_cluster_role() -> anyhow::Result<()> {
    let r = render(&["--set", "controllerManager.namespaces={team-a,team-b}"])?;
    assert!(r.of_kind("ClusterRole").is_empty(), "{}", r.summary());
    assert!(
        r.of_kind("ClusterRoleBinding").is_empty(),
        "{}",
        r.summary()
    );
    for ns in ["team-a", "team-b"] {
        let role = r
            .of_kind("Role")
            .into_iter()
            .find(|o| o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}: {}", r.summary()));
        assert_eq!(rule_triples(role), manager_triples());
        assert!(
            r.of_kind("RoleBinding")
                .iter()
                .any(|b| b["metadata"]["namespace"] == ns
                    && b["roleRef"]["name"] == role["metadata"]["name"])
        );
    }
    // The cluster-wide hooks' ConfigMaps are read in the (unwatched) release namespace.
    let hooks = r.get("Role", "-hooks-reader")?;
    assert_eq!(hooks["metadata"]["namespace"], "workerpool-system");
    let read = |v: &str| (String::new(), "configmaps".to_string(), v.to_string());
    assert_eq!(rule_triples(hooks), vec![read("get")]);
    let args = r.args()?;
    assert!(
        args.contains(&"--namespaces=team-a".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--namespaces=team-b".to_string()),
        "{args:?}"
    );

    // Watching the release namespace itself: no separate hooks Role.
    let r = render(&["--set", "controllerManager.namespaces={workerpool-system}"])?;
    assert!(!r.has("Role", "-hooks-reader"), "{}", r.summary());
    Ok(())
}

#[test]
fn metrics_are_secure_by_default_when_enabled() -> anyhow::Result<()> {
    let r = render(&["--set", "metricsService.enabled=true"])?;
    let args = r.args()?;
    assert!(
        args.ends_with(&[
            "--metrics-bind-address=:8443".into(),
            "--metrics-secure=true".into()
        ]),
        "{args:?}"
    );
    let service = r.get("Service", "-metrics-service")?;
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 8443, "protocol": "TCP", "targetPort": "metrics"}])
    );
    let manager = r.manager()?;
    assert!(
        manager["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 8443)
    );
    let auth = r.get("ClusterRole", "-metrics-auth-role")?;
    assert_eq!(
        rule_triples(auth),
        vec![
            (
                "authentication.k8s.io".into(),
                "tokenreviews".into(),
                "create".into()
            ),
            (
                "authorization.k8s.io".into(),
                "subjectaccessreviews".into(),
                "create".into()
            ),
        ]
    );
    r.get("ClusterRoleBinding", "-metrics-auth-rolebinding")?;
    let reader = r.get("ClusterRole", "-metrics-reader")?;
    assert_eq!(
        rule_triples(reader),
        vec![(String::new(), "url:/metrics".into(), "get".into())]
    );

    let plain = render(&[
        "--set",
        "metricsService.enabled=true",
        "--set",
        "metricsService.secure=false",
    ])?;
    assert!(
        plain
            .args()?
            .contains(&"--metrics-secure=false".to_string())
    );
    assert!(!plain.has("ClusterRole", "-metrics-auth-role"));
    assert!(!plain.has("ClusterRole", "-metrics-reader"));
    Ok(())
}

#[test]
fn the_service_monitor_scrapes_https_with_a_token_when_secure() -> anyhow::Result<()> {
    let r = render(&[
        "--set",
        "metricsService.enabled=true",
        "--set",
        "metricsService.serviceMonitor.enabled=true",
        "--set",
        "metricsService.serviceMonitor.interval=30s",
    ])?;
    let monitor = r.get("ServiceMonitor", "-metrics")?;
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "https");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(endpoint["tlsConfig"], json!({"insecureSkipVerify": true}));
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    // It selects the metrics Service.
    let service = r.get("Service", "-metrics-service")?;
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "label {k}");
    }
    // A certificate from a Secret is mounted where the operator looks for one.
    let r = render(&[
        "--set",
        "metricsService.enabled=true",
        "--set",
        "metricsService.certSecret=tls",
    ])?;
    let mounts = r.manager()?["volumeMounts"].as_array().unwrap().clone();
    assert!(mounts.iter().any(|m| m["name"] == "metrics-cert"
        && m["mountPath"] == "/tmp/k8s-metrics-server/serving-certs"));
    Ok(())
}

#[test]
fn crds_are_rendered_kept_and_switchable() -> anyhow::Result<()> {
    let r = render(&[])?;
    let crds = r.of_kind("CustomResourceDefinition");
    let names: BTreeSet<&str> = crds.iter().map(|c| name(c)).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "workerpools.workers.spacelift.io",
            "workers.workers.spacelift.io"
        ])
    );
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        // Everything but the chart's metadata is the generated CRD.
        let file = format!(
            "crds/{}.yaml",
            crd["spec"]["names"]["plural"].as_str().unwrap()
        );
        let generated: Value =
            yaml_serde::from_str(&std::fs::read_to_string(support::repo_root().join(&file))?)?;
        assert_eq!(crd["spec"], generated["spec"], "{file}");
    }
    let r = render(&[
        "--set",
        "crds.keep=false",
        "--set",
        "crds.annotations.team=platform",
    ])?;
    for crd in r.of_kind("CustomResourceDefinition") {
        assert_eq!(crd["metadata"]["annotations"], json!({"team": "platform"}));
    }
    let r = render(&["--set", "crds.install=false"])?;
    assert!(r.of_kind("CustomResourceDefinition").is_empty());
    Ok(())
}

#[test]
fn run_pod_budgets_go_where_the_run_pods_are() -> anyhow::Result<()> {
    let r = render(&["--set", "pdb.enabled=true"])?;
    let pdb = r.get("PodDisruptionBudget", "-run-pods")?;
    assert_eq!(pdb["metadata"]["namespace"], "workerpool-system");
    assert_eq!(pdb["spec"]["maxUnavailable"], 0);
    assert_eq!(
        pdb["spec"]["selector"],
        json!({"matchExpressions": [{"key": "workers.spacelift.io/workerpool", "operator": "Exists"}]})
    );
    let r = render(&[
        "--set",
        "pdb.enabled=true",
        "--set",
        "controllerManager.namespaces={a,b}",
        "--set",
        "pdb.minAvailable=1",
    ])?;
    let budgets = r.of_kind("PodDisruptionBudget");
    let namespaces: Vec<&Value> = budgets
        .iter()
        .map(|p| &p["metadata"]["namespace"])
        .collect();
    assert_eq!(namespaces, [&json!("a"), &json!("b")]);
    assert!(
        budgets
            .iter()
            .all(|p| p["spec"]["minAvailable"] == 1 && p["spec"].get("maxUnavailable").is_none())
    );
    Ok(())
}

#[test]
fn go_only_settings_are_refused_with_the_reason() -> anyhow::Result<()> {
    let err = render_error(&["--set", "controllerManager.enforceFips140=true"])?;
    assert!(
        err.contains("controllerManager.enforceFips140: this operator is written in Rust"),
        "{err}"
    );
    let err = render_error(&[
        "--set",
        "metricsService.enabled=true",
        "--set",
        "metricsService.enableHTTP2=true",
    ])?;
    assert!(err.contains("metricsService.enableHTTP2"), "{err}");
    // false is accepted, so values files written for Spacelift's chart keep working.
    render(&["--set", "controllerManager.enforceFips140=false"])?;
    Ok(())
}

#[test]
fn the_dockerfile_builds_what_the_chart_runs() -> anyhow::Result<()> {
    // There is no container engine here to build the image; at least keep the two in step.
    let dockerfile = std::fs::read_to_string(support::repo_root().join("Dockerfile"))?;
    assert!(dockerfile.contains("cargo build --release --locked --bin workerpool-operator"));
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        stages.last(),
        Some(&"gcr.io/distroless/cc-debian12:nonroot"),
        "{stages:?}"
    );
    assert!(
        dockerfile.contains("\nUSER 65532:65532\n"),
        "a numeric non-root user"
    );
    assert!(dockerfile.contains("\nENTRYPOINT [\"/workerpool-operator\"]\n"));
    assert_eq!(
        render(&[])?.manager()?["command"],
        json!(["/workerpool-operator"])
    );
    // The builder's Rust is the crate's rust-version (read without a TOML parser: one line).
    let cargo_toml = std::fs::read_to_string(support::repo_root().join("Cargo.toml"))?;
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim().trim_matches('"'))
        .expect("Cargo.toml has a rust-version");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "Dockerfile RUST_VERSION != Cargo.toml rust-version {rust_version}"
    );
    Ok(())
}
