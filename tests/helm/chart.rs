//! Running helm on the chart and reading what it renders.
//!
//! helm is the testenv's (built from Go modules next to kubectl), with its cache, config and data
//! directories in a temporary directory so a developer's repositories and plugins are never used.
//! Offline commands (`lint`, `template`) get a kubeconfig path that does not exist, so they can
//! never reach a real cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::support;

/// The chart, in the repository.
pub fn chart_dir() -> PathBuf {
    support::repo_root().join("charts/workerpool-operator")
}

/// The examples values file.
pub fn examples_values() -> PathBuf {
    chart_dir().join("examples/hooks.yaml")
}

fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // `testenv bin-dir` only prints where the cached binaries are; it starts nothing.
        Command::new(support::testenv_script())
            .arg("bin-dir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("helm"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("helm"))
    })
}

fn helm_home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("a temporary directory for helm"))
        .path()
}

/// What a helm run printed.
#[derive(Debug)]
pub struct HelmOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

fn run(args: &[OsString], kubeconfig: &Path) -> anyhow::Result<HelmOutput> {
    let home = helm_home();
    let out = Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", helm_bin().display()))?;
    Ok(HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

fn ok(args: &[OsString], out: HelmOutput) -> anyhow::Result<String> {
    if out.success {
        Ok(out.stdout)
    } else {
        bail!(
            "helm {} failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.stderr.trim()
        )
    }
}

/// helm without a cluster (lint, template, show): whatever it printed.
pub fn helm_offline<I, S>(args: I) -> anyhow::Result<HelmOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(
        &os_args(args),
        Path::new("/nonexistent/workerpool-test-kubeconfig"),
    )
}

/// helm against the test cluster: stdout, or an error with stderr.
pub fn helm_cluster<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args = os_args(args);
    let out = run(&args, &support::cluster().kubeconfig)?;
    ok(&args, out)
}

/// `helm template <release> <chart> --namespace <ns> <args>`: the YAML, or an error with
/// helm's message.
pub fn template_yaml(
    chart: &Path,
    release: &str,
    namespace: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let mut all = os_args(["template", release]);
    all.push(chart.into());
    all.extend(os_args(["--namespace", namespace]));
    all.extend(os_args(args));
    let out = helm_offline(&all)?;
    ok(&all, out)
}

/// The default chart rendered with `args`, parsed.
pub fn render(args: &[&str]) -> anyhow::Result<Rendering> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Rendering::parse(&template_yaml(
        &chart_dir(),
        "wpo",
        "workerpool-system",
        &args,
    )?)
}

/// `helm template` of the default chart with `args`, expected to fail: helm's message.
pub fn render_error(args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["template", "wpo"];
    let chart = chart_dir();
    let chart = chart.to_str().context("a UTF-8 chart path")?;
    all.push(chart);
    all.extend(args);
    let out = helm_offline(&all)?;
    anyhow::ensure!(
        !out.success,
        "helm template {args:?} succeeded, expected an error"
    );
    Ok(out.stderr)
}

/// Every object of a rendering.
#[derive(Debug)]
pub struct Rendering {
    pub objects: Vec<Value>,
}

impl Rendering {
    pub fn parse(yaml: &str) -> anyhow::Result<Self> {
        let mut objects = Vec::new();
        for document in yaml_serde::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).context("a rendered document is not YAML")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Self { objects })
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of this kind whose name ends with `suffix`.
    pub fn get(&self, kind: &str, suffix: &str) -> anyhow::Result<&Value> {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .into_iter()
            .filter(|o| name(o).ends_with(suffix))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => bail!(
                "no {kind} named *{suffix} in the rendering: {}",
                self.summary()
            ),
            _ => bail!("several {kind}s named *{suffix}: {}", self.summary()),
        }
    }

    pub fn has(&self, kind: &str, suffix: &str) -> bool {
        self.of_kind(kind).iter().any(|o| name(o).ends_with(suffix))
    }

    pub fn deployment(&self) -> anyhow::Result<&Value> {
        self.get("Deployment", "-controller-manager")
    }

    /// An annotation of the operator Pod's template, "" when it has none.
    pub fn pod_annotation(&self, key: &str) -> anyhow::Result<String> {
        Ok(
            self.deployment()?["spec"]["template"]["metadata"]["annotations"][key]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    pub fn manager(&self) -> anyhow::Result<&Value> {
        let deployment = self.deployment()?;
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "manager"))
            .context("the Deployment has no container called manager")
    }

    /// The operator's arguments (after the command).
    pub fn args(&self) -> anyhow::Result<Vec<String>> {
        Ok(strings(&self.manager()?["args"]))
    }

    /// The operator's --hook-config file, from its ConfigMap.
    pub fn hook_config(&self) -> anyhow::Result<String> {
        self.get("ConfigMap", "-hooks")?["data"]["hooks.yaml"]
            .as_str()
            .map(str::to_owned)
            .context("the hooks ConfigMap has no hooks.yaml")
    }

    /// The operator's --run-pod-guard file, from the same ConfigMap.
    pub fn run_pod_guard(&self) -> anyhow::Result<String> {
        self.get("ConfigMap", "-hooks")?["data"]["run-pod-guard.yaml"]
            .as_str()
            .map(str::to_owned)
            .context("the hooks ConfigMap has no run-pod-guard.yaml")
    }

    /// `kind/namespace/name` of every object, for messages.
    pub fn summary(&self) -> String {
        self.objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["namespace"].as_str().unwrap_or("-"),
                    name(o)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// A JSON array of strings as a Vec (empty for anything else).
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of a (Cluster)Role as `(apiGroup, resource, verb)` triples, plus
/// `("", "url:/metrics", verb)` for non-resource URLs and `resource#name` for resourceNames.
pub fn rule_triples(role: &Value) -> Vec<(String, String, String)> {
    let mut triples = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let verbs = strings(&rule["verbs"]);
        let names = strings(&rule["resourceNames"]);
        for url in strings(&rule["nonResourceURLs"]) {
            for verb in &verbs {
                triples.push((String::new(), format!("url:{url}"), verb.clone()));
            }
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in &verbs {
                    if names.is_empty() {
                        triples.push((group.clone(), resource.clone(), verb.clone()));
                    }
                    for n in &names {
                        triples.push((group.clone(), format!("{resource}#{n}"), verb.clone()));
                    }
                }
            }
        }
    }
    triples.sort();
    triples
}

/// What the operator may do in a watched namespace (or, with a ClusterRole, everywhere): the
/// chart's promise, documented in docs/helm.md. `(apiGroup, resource, verbs)`.
pub const MANAGER_RULES: &[(&str, &str, &[&str])] = &[
    (
        "workers.spacelift.io",
        "workerpools",
        &["get", "list", "watch", "patch"],
    ),
    ("workers.spacelift.io", "workerpools/status", &["patch"]),
    ("workers.spacelift.io", "workerpools/scale", &["patch"]),
    (
        "workers.spacelift.io",
        "workerpools/finalizers",
        &["update"],
    ),
    (
        "workers.spacelift.io",
        "workers",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("workers.spacelift.io", "workers/status", &["patch"]),
    ("workers.spacelift.io", "workers/finalizers", &["update"]),
    (
        "",
        "pods",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("", "secrets", &["get", "list", "watch", "create"]),
    ("", "configmaps", &["get", "list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// [`MANAGER_RULES`] as sorted triples.
pub fn manager_triples() -> Vec<(String, String, String)> {
    let mut triples: Vec<_> = MANAGER_RULES
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect();
    triples.sort();
    triples
}

/// A copy of the chart in a temporary directory, to change without touching the repository.
pub struct ChartCopy {
    pub dir: tempfile::TempDir,
}

impl ChartCopy {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        copy_dir(&chart_dir(), dir.path())?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn read(&self, file: &str) -> anyhow::Result<String> {
        let path = self.path().join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn write(&self, file: &str, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let path = self.path().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A values file holding `yaml`, for `-f` (values such as multi-line Rego are awkward with
/// `--set`). Removed when dropped.
pub fn values_file(yaml: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut file, yaml.as_bytes())?;
    Ok(file)
}

/// plugins/target/wasm/<name>.wasm, after running `plugins/build` once per test process
/// (incremental: a no-op when nothing changed), so that a test never loads a stale module.
pub fn example_plugin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let status = Command::new(support::repo_root().join("plugins/build"))
                .arg("--quiet")
                .status()
                .map_err(|e| format!("running plugins/build: {e}"))?;
            if !status.success() {
                return Err(format!("plugins/build failed ({status})"));
            }
            Ok(support::repo_root().join("plugins/target/wasm"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(format!("{name}.wasm"));
    anyhow::ensure!(path.is_file(), "{} was not built", path.display());
    Ok(path)
}
