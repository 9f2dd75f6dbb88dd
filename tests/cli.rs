//! The `workerpool-operator` command line, as a user runs it: `crds`, `render` (with and without
//! hooks) and `plugin check`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the binary; returns (success, stdout, stderr).
fn operator(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_workerpool-operator"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn render(pool: &Path, run: &Path, format: &str) -> (bool, String, String) {
    operator(&[
        "render",
        "--pool",
        pool.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "-o",
        format,
    ])
}

#[test]
fn crds_prints_exactly_the_committed_crd_files() {
    let (ok, stdout, stderr) = operator(&["crds"]);
    assert!(ok, "{stderr}");
    let committed = [
        std::fs::read_to_string(repo("crds/workerpools.yaml")).unwrap(),
        std::fs::read_to_string(repo("crds/workers.yaml")).unwrap(),
    ]
    .join("---\n");
    assert_eq!(stdout, committed);
}

#[test]
fn render_prints_the_run_pod_for_the_seed_pool() {
    let (ok, stdout, stderr) = render(
        &repo("tests/fixtures/seed/create-a-workerpool.yaml"),
        &repo("tests/fixtures/runs/preparing.json"),
        "json",
    );
    assert!(ok, "{stderr}");
    let pod: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(
        pod["metadata"]["name"],
        "01hn37wc3mcne3cy9hahwrf06k-preparing-2"
    );
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "init");
    assert_eq!(pod["spec"]["containers"][1]["name"], "worker");

    let (ok, yaml, stderr) = render(
        &repo("tests/fixtures/seed/create-a-workerpool.yaml"),
        &repo("tests/fixtures/runs/preparing.json"),
        "yaml",
    );
    assert!(ok, "{stderr}");
    assert!(
        yaml.contains("name: 01hn37wc3mcne3cy9hahwrf06k-preparing-2"),
        "{yaml}"
    );
}

#[test]
fn render_refuses_bad_input_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good_pool = repo("tests/fixtures/seed/create-a-workerpool.yaml");
    let good_run = repo("tests/fixtures/runs/preparing.json");
    let typo_pool = write(
        "typo.yaml",
        "apiVersion: workers.spacelift.io/v1beta1\nkind: WorkerPool\nmetadata: {name: p}\nspec:\n  poolSzie: 2\n",
    );
    let string_attempt = write(
        "attempt.json",
        r#"{"runId":"01HN37WC3MCNE3CY9HAHWRF06K","stage":"planning","attempt":"one","launcherImage":"l"}"#,
    );
    let no_stage = write(
        "nostage.json",
        r#"{"runId":"01HN37WC3MCNE3CY9HAHWRF06K","attempt":1,"launcherImage":"l"}"#,
    );
    let bad_ulid = write(
        "ulid.json",
        r#"{"runId":"run-1","stage":"planning","attempt":1,"launcherImage":"l","runnerImage":"alpine"}"#,
    );
    let cases = [
        (
            &typo_pool,
            &good_run,
            "typo.yaml: spec.poolSzie: unknown field \"poolSzie\", did you mean \"poolSize\"?",
        ),
        (
            &good_pool,
            &string_attempt,
            "attempt.json: attempt: invalid type: string \"one\", expected u32",
        ),
        (
            &good_pool,
            &no_stage,
            "nostage.json: (document): missing field `stage`",
        ),
        (
            &good_pool,
            &bad_ulid,
            "cannot build the run Pod: run id \"run-1\" is not a ULID",
        ),
        (
            &dir.path().join("missing.yaml"),
            &good_run,
            "missing.yaml: cannot read: No such file or directory",
        ),
    ];
    for (pool, run, want) in cases {
        let (ok, stdout, stderr) = render(pool, run, "yaml");
        assert!(!ok, "render should fail for {want}");
        assert!(stdout.is_empty());
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(want), "expected {want:?} in {stderr:?}");
    }
}

/// `plugins/target/wasm/<name>.wasm`, after building the example plugins once per process.
fn example_plugin(name: &str) -> String {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(repo("plugins/build"))
            .arg("--quiet")
            .status()
            .expect("plugins/build runs");
        assert!(status.success(), "plugins/build failed");
    });
    repo(&format!("plugins/target/wasm/{name}.wasm"))
        .display()
        .to_string()
}

fn render_with_hooks(hooks: &[&str]) -> (bool, String, String) {
    let pool = repo("tests/fixtures/seed/create-a-workerpool.yaml");
    let run = repo("tests/fixtures/runs/preparing.json");
    let mut args = vec![
        "render",
        "--pool",
        pool.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(hooks);
    operator(&args)
}

#[test]
fn render_runs_plugins_over_the_pod_and_prints_the_trail() {
    let plugin = format!(
        r#"{}={{"mirrors":{{"public.ecr.aws":"mirror.example.com/ecr"}}}}"#,
        example_plugin("registry-mirror")
    );
    let (ok, pod, trail) = render_with_hooks(&["--plugin", &plugin]);
    assert!(ok, "{trail}");
    let images: Vec<&str> = pod
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(images.len(), 3, "{pod}");
    assert!(
        images
            .iter()
            .all(|i| i.starts_with("mirror.example.com/ecr/spacelift/")),
        "{images:?}"
    );
    assert!(
        trail.contains("cluster plugin") && trail.contains("registry-mirror"),
        "{trail}"
    );
    assert!(pod.contains("workers.spacelift.io/hooks"), "{pod}");
}

#[test]
fn render_with_a_denying_policy_exits_non_zero_with_the_reason() {
    let policy = repo("policies/pinned-runner-images.rego");
    let (ok, pod, stderr) = render_with_hooks(&["--policy", policy.to_str().unwrap()]);
    assert!(!ok);
    assert!(pod.is_empty(), "no Pod is printed for a denied run: {pod}");
    assert!(
        stderr.contains(
            r#"run denied by cluster policy "pinned-runner-images.rego": runner image "public.ecr.aws/spacelift/runner-terraform:latest" floats"#
        ),
        "{stderr}"
    );
}

#[test]
fn render_runs_the_pools_own_policy_from_its_file() {
    // The seed's initialization-policy pool mounts its policy from a ConfigMap; offline, the
    // file is given with --pool-policy and runs at the pool policy's place in the pipeline.
    let pool = repo("tests/fixtures/seed/initialization-policies.yaml");
    let run = repo("tests/fixtures/runs/preparing.json");
    let policy = repo("policies/pinned-runner-images.rego");
    let (ok, pod, stderr) = operator(&[
        "render",
        "--pool",
        pool.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--pool-policy",
        policy.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(pod.is_empty(), "{pod}");
    assert!(
        stderr.contains(r#"run denied by pool initialization policy "pinned-runner-images.rego""#),
        "{stderr}"
    );
    assert!(
        !stderr.contains("note: the pool's initialization policy"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_prints_the_modules_contract_and_refuses_bad_settings() {
    let plugin = example_plugin("registry-mirror");
    let (ok, out, err) = operator(&[
        "plugin",
        "check",
        &plugin,
        "--settings",
        r#"{"mirrors":{"docker.io":"m.example.com"}}"#,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("abi       workerpool_abi_v1"), "{out}");
    assert!(out.contains("evaluate, validate_settings"), "{out}");
    assert!(out.contains("settings  valid"), "{out}");

    let (ok, _, err) = operator(&[
        "plugin",
        "check",
        &plugin,
        "--settings",
        r#"{"mirrors":{}}"#,
    ]);
    assert!(!ok);
    assert!(
        err.contains("its settings were rejected: mirrors must map at least one registry host"),
        "{err}"
    );

    let (ok, _, err) = operator(&["plugin", "check", repo("Cargo.toml").to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("Cargo.toml: the module is not valid WebAssembly"),
        "{err}"
    );
}

#[test]
fn render_with_a_memory_hungry_policy_exits_with_the_limit_instead_of_aborting() {
    // regorus would ask for 7.2 PB at once; in process that aborted `render` (exit 134).
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("hungry.rego");
    std::fs::write(
        &policy,
        "package spacelift\nimport rego.v1\ndeny contains \"big\" if count(numbers.range(1, 300000000000000)) > 0\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_workerpool-operator"))
        .args(["render", "--pool"])
        .arg(repo("tests/fixtures/seed/create-a-workerpool.yaml"))
        .arg("--run")
        .arg(repo("tests/fixtures/runs/preparing.json"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "run denied by cluster policy \"hungry.rego\": cluster policy \"hungry.rego\" failed: \
             exceeded its memory limit of 32 MiB (it asked for 7200000000000000 bytes more with "
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "raise limits.maxPolicyMemoryMib (Helm value hooks.limits.maxPolicyMemoryMib) if it \
             needs more, or fix the policy; the run is denied"
        ),
        "{stderr}"
    );
}
