//! The hook pipeline deciding on real runs: a WASM plugin changes the Pod of a run that then
//! really executes, and a Rego initialization policy refuses a run before any Pod exists.

use kube::ResourceExt;

use super::RealRuns;
use crate::stack::initialization_policy_yaml;
use crate::support::repo_root;

#[tokio::test]
async fn a_plugin_and_a_policy_decide_on_real_runs() -> anyhow::Result<()> {
    let wasm = repo_root().join("plugins/target/wasm/label-injector.wasm");
    anyhow::ensure!(
        wasm.is_file(),
        "{} is missing: run plugins/build",
        wasm.display()
    );
    let hooks = "  keepSuccessfulPods: true
  plugins:
    - configMap: label-injector
      settings:
        labels:
          spacelift.io/stack: \"{run.metadata.stack}\"
";
    // The pool's own `pod:` comes from the harness (placement); the policy's volume and mount
    // go under it.
    let policy = initialization_policy_yaml("hooked-initialization-policy");
    let pod_extra = policy.trim_start_matches("  pod:\n");
    let Some(runs) = RealRuns::start_with_hooks(
        "real-hooks",
        "hooked",
        &[
            ("label-injector", "plugin.wasm", &wasm),
            (
                "hooked-initialization-policy",
                "initialization-policy.rego",
                &repo_root().join("policies/pinned-runner-images.rego"),
            ),
        ],
        hooks,
        pod_extra,
    )
    .await?
    else {
        return Ok(());
    };
    runs.create_stack("networking", "hooked", "hello", None, &[])
        .await?;
    let run = runs.trigger("networking", true).await?;
    runs.wait_state(&run.id, &["succeeded"]).await?;
    let pod = runs
        .stack
        .pods()
        .get(&format!("{}-planning-1", run.id.to_lowercase()))
        .await?;
    assert_eq!(
        pod.labels().get("spacelift.io/stack").map(String::as_str),
        Some("networking"),
        "the plugin labelled the Pod of a run that really ran"
    );
    let log = runs.log_text(&run.id, "planning").await?;
    assert!(log.contains("Plan: 4 to add"), "{log}");

    let floating = runs
        .node
        .images
        .runner_tofu
        .rsplit_once(':')
        .map(|(repo, _)| format!("{repo}:latest"));
    runs.create_stack("floating", "hooked", "hello", floating.as_deref(), &[])
        .await?;
    let denied = runs.trigger("floating", true).await?;
    let denied = runs.wait_state(&denied.id, &["denied"]).await?;
    assert!(
        denied
            .message
            .contains("floats: pin a tag other than latest"),
        "{}",
        denied.message
    );
    let pods = runs.stack.pods().list(&Default::default()).await?;
    assert!(
        pods.items
            .iter()
            .all(|p| !p.name_any().starts_with(&denied.id.to_lowercase())),
        "a denied run never gets a Pod"
    );
    runs.stack.ns.cleanup().await
}
