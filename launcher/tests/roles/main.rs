//! The launcher's three roles as real processes (`init`, then `grpc-server` and
//! `spacelift-worker` side by side, as in the run Pod) against an HTTPS server that speaks the
//! launcher API contract. The fast tier: the real reference backend and a real node are the
//! e2e suite's.

mod backend;
mod pod;
mod state_proxy;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use launcher_api::{
    Artifact, Command, Job, LogLine, LogPart, LogStream, RunKind, StageOutcome, Tool, ToolCache,
    layout,
};

use backend::{Attempt, TestBackend, sha256};
use pod::{Pod, eventually, sigterm, wait};

const RUN: &str = "01HN37WC3MCNE3CY9HAHWRF06K";
const TOOL: &[u8] = b"#!/bin/sh\necho \"faketool says $*\"\n";
const LIMIT: Duration = Duration::from_secs(60);

/// A test's backend and the runtime it runs on.
struct Harness {
    _runtime: tokio::runtime::Runtime,
    backend: TestBackend,
}

fn harness() -> Harness {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(TestBackend::start());
    backend
        .books()
        .tools
        .insert(("faketool".into(), "1.0.0".into()), TOOL.to_vec());
    Harness {
        _runtime: runtime,
        backend,
    }
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn artifact(bytes: &[u8]) -> Artifact {
    Artifact {
        sha256: sha256(bytes),
        size: bytes.len() as u64,
    }
}

fn sh(name: &str, script: &str) -> Command {
    Command {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

fn job(run: &str, stage: &str, commands: Vec<Command>) -> Job {
    Job {
        api_version: 1,
        run_id: run.into(),
        stage: stage.into(),
        attempt: 1,
        kind: RunKind::Tracked,
        stack: "demo".into(),
        tool: Tool {
            name: "faketool".into(),
            version: "1.0.0".into(),
            sha256: sha256(TOOL),
            size: TOOL.len() as u64,
        },
        source: None,
        workspace: None,
        commands,
        environment: BTreeMap::from([("TF_VAR_greeting".into(), "hello".into())]),
        working_directory: layout::SOURCE_DIR.into(),
        upload_workspace: false,
        managed_state: false,
    }
}

fn attempt(job: &Job) -> Attempt {
    (job.run_id.clone(), job.stage.clone(), job.attempt)
}

fn texts(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

/// Runs init (which must succeed), then the server and the worker; returns their codes.
fn run_pod(pod: &Pod) -> (i32, i32) {
    assert!(pod.init().success(), "init failed:\n{}", pod.logs());
    let server = pod.start_grpc_server();
    let worker = pod.start_worker();
    let worker = wait(worker, LIMIT, "the worker").code().unwrap_or(-1);
    let server = wait(server, LIMIT, "the grpc server").code().unwrap_or(-1);
    if (worker, server) != (0, 0) {
        eprintln!("{}", pod.logs());
    }
    (worker, server)
}

#[test]
fn a_tracked_run_plans_uploads_its_workspace_and_applies_from_it_with_a_cache_hit() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let source = tar_gz(&[
        ("main.tf", "terraform {}\n"),
        ("modules/net/main.tf", "# net\n"),
    ]);
    h.backend.books().sources.insert(RUN.into(), source.clone());
    let mut planning = job(
        RUN,
        "planning",
        vec![
            sh("init", "faketool init"),
            sh(
                "plan",
                "echo \"planned $TF_VAR_greeting\" > spacelift.plan; echo to-stderr >&2; \
                 i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done",
            ),
        ],
    );
    planning.source = Some(artifact(&source));
    planning.upload_workspace = true;
    planning.managed_state = true;
    let pod = Pod::new(&h.backend, &planning, cache.path());
    assert_eq!(run_pod(&pod), (0, 0));

    // The workspace as docs/launcher.md lays it out.
    let job_json: Job =
        serde_json::from_slice(&std::fs::read(pod.workspace.join("job.json")).unwrap()).unwrap();
    assert_eq!(job_json, planning);
    let source_dir = pod.workspace.join("source");
    assert_eq!(
        std::fs::read_to_string(source_dir.join("modules/net/main.tf")).unwrap(),
        "# net\n"
    );
    let state_override =
        std::fs::read_to_string(source_dir.join("spacelift_backend_override.tf")).unwrap();
    assert!(state_override.contains(&format!("http://{}/state/lock", pod.proxy_address())));
    let cached = pod.cache.join("faketool/1.0.0/faketool");
    assert_eq!(
        std::fs::read_link(pod.binaries.join("faketool")).unwrap(),
        cached
    );
    assert!(pod.binaries.join("spacelift-worker").is_file());

    let books = h.backend.books();
    let init_lines = books.lines(&attempt(&planning), LogPart::Init);
    let miss = format!(
        "tool faketool 1.0.0: cache miss, downloading {} bytes",
        TOOL.len()
    );
    assert!(
        texts(&init_lines).contains(&miss.as_str()),
        "{init_lines:#?}"
    );
    // Every worker line, in order, with seqs from 0 and no gap.
    let lines = books.lines(&attempt(&planning), LogPart::Worker);
    let text = texts(&lines);
    assert!(text.contains(&"$ sh -c faketool init"), "{text:#?}");
    assert!(text.contains(&"faketool says init"), "{text:#?}");
    let numbered: Vec<&str> = text
        .iter()
        .copied()
        .filter(|t| t.starts_with("line "))
        .collect();
    let expected: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(numbered, expected);
    let stderr = lines.iter().find(|l| l.text == "to-stderr").unwrap();
    assert_eq!(stderr.stream, LogStream::Stderr);
    assert_eq!(text.last(), Some(&"every command succeeded"));
    // The workspace went up, without job.json and the launcher's own files.
    let uploaded = books.workspaces.get(RUN).cloned().unwrap();
    let result = &books.results[&attempt(&planning)];
    assert_eq!(result.outcome, StageOutcome::Succeeded);
    assert_eq!(result.tool_cache, Some(ToolCache::Miss));
    assert_eq!(result.workspace, Some(artifact(&uploaded)));
    let names = tar_names(&uploaded);
    assert!(
        names.contains(&"source/spacelift.plan".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "job.json" || n.starts_with(".spacelift")),
        "{names:?}"
    );
    assert_eq!(books.tool_downloads, 1);
    drop(books);

    // Applying starts from planning's workspace, saved plan included, in another Pod that
    // shares the binaries cache: the tool is a hit.
    let mut applying = job(RUN, "applying", vec![sh("apply", "cat spacelift.plan")]);
    applying.workspace = Some(artifact(&uploaded));
    let pod = Pod::new(&h.backend, &applying, cache.path());
    assert_eq!(run_pod(&pod), (0, 0));
    let books = h.backend.books();
    assert!(texts(&books.lines(&attempt(&applying), LogPart::Worker)).contains(&"planned hello"));
    assert!(
        texts(&books.lines(&attempt(&applying), LogPart::Init))
            .iter()
            .any(|l| l.starts_with("tool faketool 1.0.0: cache hit"))
    );
    assert_eq!(
        books.results[&attempt(&applying)].tool_cache,
        Some(ToolCache::Hit)
    );
    assert_eq!(books.tool_downloads, 1, "a hit downloads nothing");
}

fn tar_names(tar_gz: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// Runs init, then starts the server and the worker and waits for the command's "started".
fn start_until_started(h: &Harness, pod: &Pod, job: &Job) -> (Child, Child) {
    assert!(pod.init().success(), "{}", pod.logs());
    let server = pod.start_grpc_server();
    let worker = pod.start_worker();
    eventually(LIMIT, "the command's first line", || {
        let books = h.backend.books();
        texts(&books.lines(&attempt(job), LogPart::Worker)).contains(&"started")
    });
    (server, worker)
}

/// A command that proves it got SIGINT, and keeps running until it does.
const TRAPS_SIGINT: &str =
    "trap 'echo got SIGINT; exit 130' INT; echo started; while :; do sleep 0.1; done";

#[test]
fn a_stop_from_the_backend_interrupts_the_command_with_sigint_and_the_stage_ends_stopped() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let mut stoppable = job(
        RUN,
        "applying",
        vec![sh("apply", TRAPS_SIGINT), sh("after", "echo never")],
    );
    stoppable.working_directory = String::new();
    let pod = Pod::new(&h.backend, &stoppable, cache.path());
    let (server, worker) = start_until_started(&h, &pod, &stoppable);
    h.backend.books().stop.insert(RUN.into());
    assert_eq!(wait(worker, LIMIT, "the worker").code(), Some(200));
    assert_eq!(wait(server, LIMIT, "the grpc server").code(), Some(0));

    let books = h.backend.books();
    let lines = books.lines(&attempt(&stoppable), LogPart::Worker);
    let text = texts(&lines);
    let started = text.iter().position(|t| *t == "started").unwrap();
    let interrupted = text.iter().position(|t| *t == "got SIGINT").unwrap();
    assert!(started < interrupted, "{text:#?}");
    assert!(!text.contains(&"never"), "no command runs after a stop");
    let result = &books.results[&attempt(&stoppable)];
    assert_eq!(result.outcome, StageOutcome::Stopped);
    assert_eq!(result.failed_command.as_deref(), Some("apply"));
    assert_eq!(
        pod.termination_log("worker"),
        "the run was stopped: stopped by the test (during command apply)"
    );
}

#[test]
fn sigterm_to_the_pod_interrupts_the_command_and_its_last_lines_still_arrive() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let stoppable = job(RUN, "planning", vec![sh("plan", TRAPS_SIGINT)]);
    let mut pod = Pod::new(&h.backend, &stoppable, cache.path());
    pod.env
        .push(("SPACELIFT_LAUNCHER_GRACE_SECONDS".into(), "10".into()));
    let (server, worker) = start_until_started(&h, &pod, &stoppable);
    // The kubelet signals every container at once.
    sigterm(&server);
    sigterm(&worker);
    assert_eq!(wait(worker, LIMIT, "the worker").code(), Some(200));
    assert_eq!(wait(server, LIMIT, "the grpc server").code(), Some(0));
    let books = h.backend.books();
    assert!(texts(&books.lines(&attempt(&stoppable), LogPart::Worker)).contains(&"got SIGINT"));
    assert_eq!(
        books.results[&attempt(&stoppable)].outcome,
        StageOutcome::Stopped
    );
}

#[test]
fn a_failing_command_yields_its_exit_code_and_the_termination_message() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let mut failing = job(
        RUN,
        "planning",
        vec![
            sh("ok", "echo fine"),
            sh("fail", "echo about to fail; exit 3"),
            sh("never", "echo never"),
        ],
    );
    failing.upload_workspace = true;
    failing.working_directory = String::new();
    let pod = Pod::new(&h.backend, &failing, cache.path());
    assert_eq!(run_pod(&pod), (3, 0));
    assert_eq!(
        pod.termination_log("worker"),
        "command fail (sh -c echo about to fail; exit 3) exited with code 3"
    );
    let books = h.backend.books();
    let result = &books.results[&attempt(&failing)];
    assert_eq!(result.outcome, StageOutcome::Failed);
    assert_eq!(result.failed_command.as_deref(), Some("fail"));
    assert_eq!(result.exit_code, Some(3));
    let lines = books.lines(&attempt(&failing), LogPart::Worker);
    assert!(texts(&lines).contains(&"command fail exited with code 3"));
    assert!(!texts(&lines).contains(&"never"));
    assert!(
        !books.workspaces.contains_key(RUN),
        "a failed stage uploads nothing"
    );
}

#[test]
fn init_says_what_is_missing_or_refused() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let stage = job(RUN, "planning", vec![sh("plan", "true")]);

    let pod = Pod::new(&h.backend, &stage, cache.path()).without_endpoint();
    assert_eq!(pod.init().code(), Some(1));
    assert_eq!(
        pod.termination_log("init"),
        "init failed: SPACELIFT_LAUNCHER_ENDPOINT is not set: the run schedule carried no launcherEndpoint: start the backend with its launcher API enabled"
    );

    // A backend whose certificate the pool token's CA did not sign is refused, at once.
    let other_ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let pod = Pod::new(&h.backend, &stage, cache.path()).trusting(&other_ca);
    assert_eq!(pod.init().code(), Some(1));
    let reason = pod.termination_log("init");
    assert!(
        reason
            .starts_with("init failed: the job cannot be fetched: GET job: TLS to the backend at")
            && reason.contains("must be issued by the CA in the pool token (ca_cert)")
            && reason.contains("invalid peer certificate"),
        "{reason}\n{}",
        pod.logs()
    );
    assert!(h.backend.books().logs.is_empty(), "nothing got through");

    // The backend hands this attempt to another worker: it refuses ours, and init says so.
    let pod = Pod::new(&h.backend, &stage, cache.path());
    h.backend
        .books()
        .assigned
        .get_mut(&attempt(&stage))
        .unwrap()
        .0 = "01HPS6K4BNB7BPHCDHDWFAMJNW".into();
    assert_eq!(pod.init().code(), Some(1));
    let reason = pod.termination_log("init");
    assert!(
        reason.starts_with("init failed: the job cannot be fetched: GET job: the backend answered 403: worker 01HPS6K4BNB7BPHCDHDWFAMJNV does not hold run"),
        "{reason}"
    );
}

#[test]
fn the_logs_and_run_timeouts_stop_the_command_with_their_own_codes() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let cases = [
        (
            "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
            "1s",
            202,
            "no output for SPACELIFT_LAUNCHER_LOGS_TIMEOUT (1s)",
        ),
        (
            "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
            "1500ms",
            201,
            "it ran longer than SPACELIFT_LAUNCHER_RUN_TIMEOUT (1.5s)",
        ),
    ];
    for (i, (variable, value, code, message)) in cases.into_iter().enumerate() {
        let run = format!("01HN37WC3MCNE3CY9HAHWRF06{i}");
        // Quiet after its first line; a run timeout stops it even while it talks.
        let script = if code == 202 {
            "echo begin; sleep 30"
        } else {
            "while :; do echo busy; sleep 0.2; done"
        };
        let mut slow = job(&run, "planning", vec![sh("plan", script)]);
        slow.working_directory = String::new();
        let mut pod = Pod::new(&h.backend, &slow, cache.path());
        pod.env.push((variable.into(), value.into()));
        assert_eq!(run_pod(&pod), (code, 0), "{variable}");
        let reason = pod.termination_log("worker");
        assert!(reason.starts_with("the run timed out: "), "{reason}");
        assert!(reason.contains(message), "{reason}");
        let books = h.backend.books();
        let result = &books.results[&attempt(&slow)];
        assert_eq!(result.outcome, StageOutcome::Failed);
        assert_eq!(result.message, reason);
    }
}
