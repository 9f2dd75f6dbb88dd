//! Reports however long the hooks' reasons (issue 12, item 6): always sent, cut to fit, so the
//! pool's link never runs out of in-flight slots.

use crate::stack::{Stack, initialization_policy_yaml, pool_yaml};
use crate::support::Outcome;

#[tokio::test]
async fn huge_deny_reasons_reach_the_backend_cut_and_the_pool_goes_on() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-huge-denials").await?;
    stack.create_credentials("wordy", "wordy")?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("initialization-policy.rego");
    // A reason of 300 KB, more than the 256 KiB payload cap: unsent, each denial used to hold
    // one of the link's 64 in-flight slots (and its worker) until a reconnect.
    std::fs::write(
        &policy,
        "package spacelift\nimport rego.v1\ndeny contains msg if {\n  input.run.metadata.wordy == \"yes\"\n  msg := sprintf(\"%0300000d\", [1])\n}\n",
    )?;
    stack.ns.kubectl([
        "create",
        "configmap",
        "wordy-initialization-policy",
        &format!(
            "--from-file=initialization-policy.rego={}",
            policy.display()
        ),
    ])?;
    stack.start_operator(&[])?;
    let hooks = initialization_policy_yaml("wordy-initialization-policy");
    stack.apply(&pool_yaml("wordy", "wordy", 2, &hooks))?;
    stack.wait_registered("wordy", 2).await?;

    const IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";
    let mut denied = Vec::new();
    for _ in 0..65 {
        denied.push(stack.submit("wordy", IMAGE, &[("wordy", "yes")]).await?);
    }
    for run in &denied {
        let view = stack.wait_run(&run.id, "denied").await?;
        assert!(
            view.message.contains("00000000") && view.message.contains(" more bytes)"),
            "{}",
            &view.message[..view.message.len().min(300)]
        );
        assert!(view.message.len() < 4096, "{}", view.message.len());
    }

    // The link kept its in-flight capacity: a normal run still gets its Pod.
    let run = stack.submit("wordy", IMAGE, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    stack
        .finish(&kube::ResourceExt::name_any(&pod), Outcome::Succeeded)
        .await?;
    stack.wait_run(&run.id, "succeeded").await?;
    stack.ns.cleanup().await
}
