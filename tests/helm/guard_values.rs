//! The `runPodGuard` values: rendered into the operator's --run-pod-guard file (checked with
//! the operator's own parser), rolling the Pod when they change, and refused when invalid.

use workerpool_operator::guard::{Level, RunPodGuard};

use crate::chart::*;

fn rendered_guard(args: &[&str]) -> anyhow::Result<RunPodGuard> {
    let r = render(args)?;
    Ok(RunPodGuard::parse(
        &r.run_pod_guard()?,
        "run-pod-guard.yaml",
    )?)
}

#[test]
fn the_default_guard_is_baseline_and_a_namespace_override_renders_for_the_operator()
-> anyhow::Result<()> {
    assert_eq!(rendered_guard(&[])?, RunPodGuard::default());
    let guard = rendered_guard(&[
        "--set",
        "runPodGuard.namespaces.ci-docker.level=privileged",
        "--set",
        "runPodGuard.allowedImageHosts={public.ecr.aws,docker.io}",
        "--set",
        "runPodGuard.serviceAccounts={default}",
    ])?;
    assert_eq!(guard.rules("ci-docker").level, Level::Privileged);
    assert_eq!(guard.rules("team-a").level, Level::Baseline);
    assert_eq!(
        guard.rules("ci-docker").allowed_image_hosts,
        ["public.ecr.aws", "docker.io"]
    );
    assert_eq!(guard.rules("team-a").service_accounts, ["default"]);
    Ok(())
}

#[test]
fn changing_the_guard_rolls_the_operator_pod() -> anyhow::Result<()> {
    let checksum = |args: &[&str]| render(args)?.pod_annotation("checksum/run-pod-guard");
    let default = checksum(&[])?;
    assert_eq!(default.len(), 64, "{default:?}");
    assert_ne!(
        checksum(&["--set", "runPodGuard.level=restricted"])?,
        default
    );
    Ok(())
}

#[test]
fn bad_guard_values_are_refused() -> anyhow::Result<()> {
    for (args, want) in [
        (["--set", "runPodGuard.level=strict"], "level"),
        (
            ["--set", "runPodGuard.allowedImageHosts={}"],
            "allowedImageHosts",
        ),
        (
            ["--set", "runPodGuard.serviceAccounts={Admin}"],
            "serviceAccounts",
        ),
        (
            ["--set", "runPodGuard.namespaces.Team_A.level=baseline"],
            "Team_A",
        ),
        (
            ["--set", "runPodGuard.privileged=true"],
            "additional properties 'privileged' not allowed",
        ),
    ] {
        let err = render_error(&args)?;
        assert!(err.contains(want), "{args:?}: {err}");
    }
    Ok(())
}
