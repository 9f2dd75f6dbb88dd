//! API writes that fail for a while, on the real API server: a ValidatingAdmissionPolicy
//! that refuses the operator's writes named in an annotation of the test's Namespace, switched
//! on and off by editing that annotation, and a validating webhook that points nowhere (so every call it
//! matches errors with a 500) switched on and off by creating and deleting it. Both match the
//! operator's ServiceAccount in one namespace only, so the tests' own writes and other tests
//! are untouched.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

use crate::support;

/// A write the faults can make fail: `pods:CREATE`, `pods:DELETE`, `pods:UPDATE` (patches),
/// `workers/status:UPDATE`, `workers:UPDATE` (finalizers), `workers:DELETE`.
pub const STEPS: [&str; 6] = [
    "pods:CREATE",
    "workers/status:UPDATE",
    "pods:UPDATE",
    "pods:DELETE",
    "workers:DELETE",
    "workers:UPDATE",
];

/// Refuses the operator's writes whose `resource[/subresource]:OPERATION` is listed in the
/// namespace's `workerpool.dev/refuse` annotation, and with `workers/status:RELEASE` a Worker
/// status write that drops its current run (the one that frees a worker), but not the one
/// that sets it; and ConfigMap `workerpool.dev/probe`, by which [`Faults::probe`] sees the
/// switch in force. The switch lives on the Namespace (`namespaceObject`), not in a param
/// object: the API server stopped finding a policy's params once an earlier policy with the
/// same param kind was deleted (seen with Kubernetes 1.36). `request.subResource` is absent,
/// not empty, for a request to the resource itself.
const REFUSE: &str = "!(has(namespaceObject.metadata.annotations)
  && 'workerpool.dev/fault-user' in namespaceObject.metadata.annotations
  && request.userInfo.username == namespaceObject.metadata.annotations['workerpool.dev/fault-user']
  && ((request.resource.resource == 'configmaps' && request.operation == 'CREATE'
        && object.metadata.name == namespaceObject.metadata.annotations['workerpool.dev/probe'])
    || (request.resource.resource + (has(request.subResource) && request.subResource != '' ? '/' + request.subResource : '') + ':' + request.operation)
        in namespaceObject.metadata.annotations['workerpool.dev/refuse'].split(',')
    || ('workers/status:RELEASE' in namespaceObject.metadata.annotations['workerpool.dev/refuse'].split(',')
        && has(request.subResource) && request.subResource == 'status'
        && has(oldObject.status) && has(oldObject.status.currentRun)
        && (!has(object.status) || !has(object.status.currentRun)))))";

/// The switches of one test namespace; removed when dropped.
pub struct Faults {
    namespace: String,
    user: String,
    client: kube::Client,
    /// Bumped with every switch, so that [`Faults::probe`] knows which one is in force.
    version: std::sync::atomic::AtomicU32,
}

impl Faults {
    /// Installs the (inactive) policy for `user` in `namespace`.
    pub async fn install(namespace: &str, user: &str) -> anyhow::Result<Self> {
        let client = support::client().await?;
        let faults = Self {
            namespace: namespace.into(),
            user: user.into(),
            client,
            version: Default::default(),
        };
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "metadata": {"name": faults.name()},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["", "workers.spacelift.io"],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE", "DELETE"],
                    "resources": ["pods", "workers", "workers/status", "configmaps"],
                }]},
                "validations": [{
                    "expression": REFUSE,
                    "reason": "Forbidden",
                    "message": "refused by the fault suite",
                }],
            },
        }))?;
        Api::<ValidatingAdmissionPolicy>::all(faults.client.clone())
            .create(&PostParams::default(), &policy)
            .await?;
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "metadata": {"name": faults.name()},
            "spec": {
                "policyName": faults.name(),
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        }))?;
        Api::<ValidatingAdmissionPolicyBinding>::all(faults.client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        faults.refuse(&[]).await?;
        Ok(faults)
    }

    fn name(&self) -> String {
        format!("faults-{}", self.namespace)
    }

    /// Refuses (403) the operator's writes of these steps from now on (none: all allowed).
    pub async fn refuse(&self, steps: &[&str]) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let version = 1 + self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let probe = format!("probe-{version}");
        let patch = json!({"metadata": {"annotations": {
            "workerpool.dev/fault-user": self.user,
            "workerpool.dev/refuse": steps.join(","),
            "workerpool.dev/probe": probe,
        }}});
        namespaces
            .patch(
                &self.namespace,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.probe(&probe, true).await
    }

    /// Waits until the API server refuses (or, `refused` false, accepts) ConfigMap `probe`
    /// from the operator, in a dry run: the switch that names it is in force.
    async fn probe(&self, probe: &str, refused: bool) -> anyhow::Result<()> {
        let operator =
            support::service_account_client(&self.namespace, crate::bench::OPERATOR_SA).await?;
        let as_operator: Api<ConfigMap> = Api::namespaced(operator, &self.namespace);
        let config: ConfigMap = serde_json::from_value(json!({"metadata": {"name": probe}}))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        support::wait_for(
            "the fault switch in force",
            Duration::from_secs(30),
            || async {
                let answer = as_operator.create(&dry_run, &config).await;
                Ok((answer.is_err() == refused).then_some(()))
            },
        )
        .await
    }

    /// Makes the operator's writes of `step` error (500: the webhook cannot be reached) from
    /// now on, until [`Faults::stop_erroring`].
    pub async fn error(&self, step: &str) -> anyhow::Result<()> {
        let (resource, operation) = step.split_once(':').unwrap_or((step, "CREATE"));
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let webhook: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": self.name()},
            "webhooks": [{
                "name": "faults.workerpool.dev",
                "clientConfig": {"url": "https://127.0.0.1:1/refuse"},
                "rules": [{
                    "apiGroups": ["", "workers.spacelift.io"],
                    "apiVersions": ["*"],
                    "operations": [operation],
                    "resources": [if subresource.is_empty() { resource.to_string() } else { format!("{resource}/{subresource}") }],
                }, {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["configmaps"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                "matchConditions": [{"name": "operator", "expression": format!(
                    "request.userInfo.username == '{}' && (request.resource.resource != 'configmaps' || object.metadata.name == '{WEB_PROBE}')",
                    self.user
                )}],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }],
        }))?;
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &webhook)
            .await?;
        self.probe(WEB_PROBE, true).await
    }

    pub async fn stop_erroring(&self) -> anyhow::Result<()> {
        let api = Api::<ValidatingWebhookConfiguration>::all(self.client.clone());
        match api.delete(&self.name(), &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(err) => return Err(err.into()),
        }
        self.probe(WEB_PROBE, false).await
    }
}

/// The ConfigMap the erroring webhook also matches, to know when it is in force.
const WEB_PROBE: &str = "probe-webhook";

impl Drop for Faults {
    fn drop(&mut self) {
        let name = self.name();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = support::client().await?;
                let dp = DeleteParams::default();
                let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<ValidatingAdmissionPolicy>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<ValidatingWebhookConfiguration>::all(client)
                    .delete(&name, &dp)
                    .await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
