//! How a run ends, as a real kubelet reports it and the operator's classifier reads it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStateWaiting, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use workerpool_operator::controller::outcome::{PodProgress, Waits};
use workerpool_operator::pod::WORKER_CONTAINER;
use workerpool_operator::protocol::{FailureCause, Outcome};

use crate::support::real_node::real_node;
use crate::support::{TestNamespace, container_terminated, pod_finished, pod_phase};
use crate::{ended, run, run_pod, verdict, worker};

/// Waits that have all run out: the classifier's answer for a Pod that waited too long.
const NO_WAITS: Waits = Waits {
    image_pull: Duration::ZERO,
    unschedulable: Duration::ZERO,
    create_container: Duration::ZERO,
    node_lost: Duration::ZERO,
};

#[tokio::test]
async fn a_worker_that_exits_non_zero_fails_the_run_with_its_code_and_message() -> anyhow::Result<()>
{
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-exit").await?;
    // What the launcher's worker does when a command fails: say which, in the termination
    // message, and exit with its code.
    let script =
        "echo planning; printf 'command plan exited with code 3' >/dev/termination-log; exit 3";
    let pod = run(&ns, &run_pod(node, "exit", None, script), pod_finished).await?;

    assert_eq!(pod_phase(&pod), "Failed");
    let terminated = container_terminated(&pod, WORKER_CONTAINER).expect("the worker ended");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    let e = ended(&pod, &Waits::default());
    assert_eq!(
        (e.outcome, e.cause, e.exit_code, e.message.as_str()),
        (
            Outcome::Failed,
            Some(FailureCause::Error),
            Some(3),
            "the worker container exited with code 3: command plan exited with code 3"
        )
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_worker_over_its_memory_limit_is_oom_killed() -> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-oom").await?;
    let mut pod = run_pod(node, "oom", None, "");
    // dd holds a 256 MiB buffer it fills from /dev/zero: four times the limit.
    let w = worker(&mut pod);
    w.command = Some(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]
            .map(String::from)
            .to_vec(),
    );
    let limit = [("memory".to_owned(), Quantity("64Mi".into()))];
    w.resources = Some(ResourceRequirements {
        limits: Some(limit.clone().into()),
        requests: Some(limit.into()),
        ..ResourceRequirements::default()
    });
    let pod = run(&ns, &pod, pod_finished).await?;

    let terminated = container_terminated(&pod, WORKER_CONTAINER).expect("the worker ended");
    assert_eq!(
        (terminated.reason.as_deref(), terminated.exit_code),
        (Some("OOMKilled"), 137),
        "{terminated:?}"
    );
    let e = ended(&pod, &Waits::default());
    assert_eq!(
        (e.outcome, e.cause, e.message.as_str()),
        (
            Outcome::Failed,
            Some(FailureCause::OomKilled),
            "container worker was killed for exceeding its memory limit (OOMKilled, exit code 137)"
        )
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_run_past_its_active_deadline_fails_as_deadline_exceeded() -> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-deadline").await?;
    let mut pod = run_pod(node, "deadline", None, "sleep 3600");
    pod.spec.as_mut().expect("a spec").active_deadline_seconds = Some(3);
    let deadline_exceeded =
        |p: &Pod| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded");
    let pod = run(&ns, &pod, deadline_exceeded).await?;

    assert_eq!(pod_phase(&pod), "Failed");
    let e = ended(&pod, &Waits::default());
    assert_eq!(
        (e.outcome, e.cause, e.message.as_str()),
        (
            Outcome::Failed,
            Some(FailureCause::DeadlineExceeded),
            "the run exceeded its deadline (activeDeadlineSeconds 3)"
        )
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_runner_image_the_node_does_not_have_is_never_pulled_and_fails_the_run()
-> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-neverpull").await?;
    let mut pod = run_pod(node, "neverpull", None, "true");
    worker(&mut pod).image = Some("localhost/workerpool-operator/absent:0".into());
    let pod = run(&ns, &pod, |p| {
        worker_waiting(p, &["ErrImageNeverPull"]).is_some()
    })
    .await?;

    // The image may still be loaded onto the node: tolerated for the image-pull wait ...
    assert!(
        matches!(
            verdict(&pod, &Waits::default()),
            PodProgress::InProgress { recheck: Some(_) }
        ),
        "{:?}",
        verdict(&pod, &Waits::default())
    );
    // ... then the run fails, and the Pod is abandoned (it would wait forever).
    let e = ended(&pod, &NO_WAITS);
    assert_eq!(
        (e.outcome, e.cause, e.abandon),
        (Outcome::Failed, Some(FailureCause::ImagePullBackOff), true)
    );
    assert!(
        e.message
            .starts_with("container worker is stuck in ErrImageNeverPull after ")
            && e.message.contains("localhost/workerpool-operator/absent:0"),
        "{}",
        e.message
    );
    ns.cleanup().await
}

#[tokio::test]
async fn a_runner_image_from_a_registry_that_does_not_answer_backs_off_then_fails_the_run()
-> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-pull").await?;
    // A loopback port nobody listens on: the pull goes nowhere off this machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let image = format!("127.0.0.1:{port}/workerpool-operator/absent:0");
    let mut pod = run_pod(node, "pull", None, "true");
    let w = worker(&mut pod);
    w.image = Some(image.clone());
    w.image_pull_policy = Some("Always".into());
    let pod = run(&ns, &pod, |p| {
        worker_waiting(p, &["ErrImagePull", "ImagePullBackOff"]).is_some()
    })
    .await?;

    let waiting = worker_waiting(&pod, &["ErrImagePull", "ImagePullBackOff"]).expect("waiting");
    let why = waiting.message.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("127.0.0.1:{port}")) && why.contains("connection refused"),
        "{why}"
    );
    assert!(matches!(
        verdict(&pod, &Waits::default()),
        PodProgress::InProgress { recheck: Some(_) }
    ));
    let e = ended(&pod, &NO_WAITS);
    assert_eq!(
        (e.cause, e.abandon),
        (Some(FailureCause::ImagePullBackOff), true)
    );
    assert!(e.message.contains(&image), "{}", e.message);
    ns.cleanup().await
}

/// The worker's waiting state, if its reason is one of these.
fn worker_waiting<'a>(pod: &'a Pod, reasons: &[&str]) -> Option<&'a ContainerStateWaiting> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == WORKER_CONTAINER)?
        .state
        .as_ref()?
        .waiting
        .as_ref()
        .filter(|w| reasons.contains(&w.reason.as_deref().unwrap_or_default()))
}
