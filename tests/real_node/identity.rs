//! Who a run's containers are on a real node: uid/gid 1983, the workspace owned by the
//! fsGroup, and what the init container said.

use workerpool_operator::controller::outcome::Waits;
use workerpool_operator::pod::{INIT_CONTAINER, WORKER_CONTAINER, WORKSPACE_PATH};
use workerpool_operator::protocol::{FailureCause, Outcome};

use crate::support::real_node::real_node;
use crate::support::{TestNamespace, pod_finished, pod_phase};
use crate::{ended, logs, run, run_pod};

#[tokio::test]
async fn init_and_worker_run_as_1983_and_share_a_workspace_owned_by_the_fs_group()
-> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-identity").await?;
    let init = format!("id; echo \"laid out by $(id -u):$(id -g)\" >{WORKSPACE_PATH}/job");
    let worker = format!(
        "id; stat -c '%u %g %A %n' {WORKSPACE_PATH} {WORKSPACE_PATH}/job; cat {WORKSPACE_PATH}/job; \
         touch {WORKSPACE_PATH}/plan && echo wrote the plan; tofu version"
    );
    let pod = run(
        &ns,
        &run_pod(node, "identity", Some(&init), &worker),
        pod_finished,
    )
    .await?;
    assert_eq!(pod_phase(&pod), "Succeeded", "{:?}", pod.status);

    // The runner image's /etc/passwd names the user; fsGroup adds nothing beyond 1983.
    let id = "uid=1983(spacelift) gid=1983(spacelift) groups=1983(spacelift)";
    assert_eq!(logs(&ns, "identity", INIT_CONTAINER)?.trim(), id);
    let out = logs(&ns, "identity", WORKER_CONTAINER)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&id), "{out}");
    // The emptyDir belongs to the fsGroup, writable by the group, setgid so that what is
    // made in it belongs to the group too.
    assert!(
        lines.contains(&format!("0 1983 drwxrwsrwx {WORKSPACE_PATH}").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&format!("1983 1983 -rw-r--r-- {WORKSPACE_PATH}/job").as_str()),
        "{out}"
    );
    assert!(lines.contains(&"laid out by 1983:1983"), "{out}");
    assert!(lines.contains(&"wrote the plan"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("OpenTofu v")),
        "the runner image's tofu runs as 1983: {out}"
    );

    let e = ended(&pod, &Waits::default());
    assert_eq!(
        (e.outcome, e.cause, e.exit_code),
        (Outcome::Succeeded, None, Some(0))
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_failing_init_container_fails_the_run_and_its_logs_say_why() -> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-init").await?;
    let init = "echo 'init: the backend refused the job (403)'; exit 2";
    let pod = run(
        &ns,
        &run_pod(node, "init", Some(init), "echo never"),
        pod_finished,
    )
    .await?;

    assert_eq!(pod_phase(&pod), "Failed");
    assert_eq!(
        logs(&ns, "init", INIT_CONTAINER)?.trim(),
        "init: the backend refused the job (403)"
    );
    let e = ended(&pod, &Waits::default());
    assert_eq!(
        (e.outcome, e.cause, e.exit_code, e.message.as_str()),
        (
            Outcome::Failed,
            Some(FailureCause::Error),
            None,
            "the init container exited with code 2"
        )
    );
    ns.cleanup().await
}
