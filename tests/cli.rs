//! The `workerpool-operator` command line, as a user runs it: `crds` and `render`.

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
