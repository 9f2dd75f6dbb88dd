use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, HostAlias, Lifecycle, LocalObjectReference,
    PodDNSConfig, PodSecurityContext, ResourceRequirements, SecretKeySelector, SecurityContext,
    Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::autoscaling::{Autoscaling, AutoscalingStatus};
use crate::hooks::PluginSpec;

/// The default `spec.pod.activeDeadlineSeconds`: 70 minutes.
pub const DEFAULT_ACTIVE_DEADLINE_SECONDS: i64 = 4200;
/// The default `spec.pod.terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// The longest WorkerPool name: a Worker is named `<pool>-<worker ULID>` (27 more) and an
/// event about it `<worker>.<16 hex digits>` (17 more), within Kubernetes' 253.
pub const MAX_POOL_NAME: usize = 253 - 27 - 17;
/// What the apiserver (and `render`) says about a longer name.
pub const POOL_NAME_MESSAGE: &str = "metadata.name: a WorkerPool name is at most 209 characters: its Workers are named <pool>-<worker ULID> (27 more) and events about them add 17, within Kubernetes' 253; choose a shorter name";

/// A pool of Spacelift workers. The operator keeps `poolSize` Workers registered with the
/// backend and creates a run Pod for each run the backend schedules on one of them.
// Several printer columns share `type_`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "workers.spacelift.io",
    version = "v1beta1",
    kind = "WorkerPool",
    plural = "workerpools",
    namespaced,
    status = "WorkerPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of Spacelift workers that process runs on on-demand Pods.",
    scale(
        spec_replicas_path = ".spec.poolSize",
        status_replicas_path = ".status.actualPoolSize",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired pool size",
        type_ = "integer",
        json_path = ".spec.poolSize"
    ),
    printcolumn(
        name = "Actual pool size",
        type_ = "integer",
        json_path = ".status.actualPoolSize"
    ),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 209").message(POOL_NAME_MESSAGE)
)]
#[x_kube(
    validation = Rule::new("!has(self.token) || has(self.privateKey)")
        .message("privateKey must be set when token is: both point at keys of the Secret created for the pool")
        .field_path(".privateKey")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.privateKey) || has(self.token)")
        .message("token must be set when privateKey is: both point at keys of the Secret created for the pool")
        .field_path(".token")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerPoolSpec {
    /// poolSize specifies the current number of Workers that belong to the pool. Optional,
    /// defaults to 1 if not provided.
    #[serde(
        default = "default_pool_size",
        deserialize_with = "null_as_default_pool_size"
    )]
    #[schemars(range(min = 0))]
    pub pool_size: i32,

    /// token points at a Kubernetes Secret key containing the worker pool token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretKeyRef>,

    /// privateKey points at a Kubernetes Secret key containing the worker pool private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<SecretKeyRef>,

    /// allowedRunnerImageHosts defines the hostnames of registries that are valid to use stack
    /// runner images from. If none are specified, images from any registries are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_runner_image_hosts: Option<Vec<String>>,

    /// keepSuccessfulPods indicates whether run Pods should automatically be removed as soon as
    /// they complete successfully, or be kept so that they can be inspected later. By default run
    /// Pods are removed as soon as they complete successfully. Failed Pods are not automatically
    /// removed to allow debugging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_successful_pods: Option<bool>,

    /// successfulPodsHistoryLimit keeps at most this many successful run Pods per worker, oldest
    /// removed first. Setting it keeps successful Pods even when keepSuccessfulPods is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_pods_history_limit: Option<i32>,

    /// failedPodsHistoryLimit keeps at most this many failed run Pods per worker, oldest removed
    /// first. Unset keeps every failed Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_pods_history_limit: Option<i32>,

    /// successfulPodsHistoryTTL removes kept successful run Pods this long after they finished,
    /// as a Go duration such as "24h" or "90m".
    #[serde(
        default,
        rename = "successfulPodsHistoryTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new(GO_DURATION_RULE).message(GO_DURATION_MESSAGE))]
    pub successful_pods_history_ttl: Option<kube::core::Duration>,

    /// failedPodsHistoryTTL removes failed run Pods this long after they finished, as a Go
    /// duration such as "168h".
    #[serde(
        default,
        rename = "failedPodsHistoryTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new(GO_DURATION_RULE).message(GO_DURATION_MESSAGE))]
    pub failed_pods_history_ttl: Option<kube::core::Duration>,

    /// defaultRunnerImage is the runner image used when a run does not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_runner_image: Option<String>,

    /// plugins are WebAssembly hooks, in order, that may change or refuse this pool's run Pods
    /// before they are created. They run after the cluster-wide plugins.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(UNIQUE_PLUGIN_NAMES).message(
        "two plugins have the same name (name, or configMap when name is unset): give each its own name"
    ))]
    pub plugins: Vec<PluginSpec>,

    /// pod contains the spec of Pods that will be created to process Spacelift runs. This allows
    /// you to set things like custom resource requests and limits, volumes, and service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodTemplate>,

    /// autoscaling sizes the pool from the runs the backend has queued for it. When set, the
    /// operator owns poolSize (docs/autoscaling.md); when unset, poolSize is left to the user,
    /// `kubectl scale`, an HPA or KEDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// Each plugin's name (its `name`, else its ConfigMap) appears once: it keys events, metrics
/// and the Pod's hook annotation.
const UNIQUE_PLUGIN_NAMES: &str = "self.all(p, self.exists_one(q, \
     (has(q.name) ? q.name : q.configMap) == (has(p.name) ? p.name : p.configMap)))";

/// A Go duration as `kube::core::Duration` reads it, without a sign (a TTL is never negative).
const GO_DURATION_RULE: &str = r"self.matches('^(0|([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+)$')";
const GO_DURATION_MESSAGE: &str =
    r#"must be a Go duration such as "24h", "90m" or "1h30m" (units h, m, s, ms, us, ns; no days)"#;

fn default_pool_size() -> i32 {
    1
}

/// `poolSize: null` in a file reads as the default, as the apiserver treats it.
fn null_as_default_pool_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_else(default_pool_size))
}

/// `plugins: null` reads as no plugins (the field is nullable like every optional one).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

/// A reference to one key of a Secret in the pool's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret and key holding the value.
    pub secret_key_ref: SecretKeySelector,
}

/// The run Pod settings of a pool. Most of these are standard Kubernetes Pod settings copied to
/// every run Pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplate {
    /// activeDeadlineSeconds defines the length of time in seconds before which the Pod will be
    /// marked as failed. This can be used to set a deadline for your runs. The default is 70
    /// minutes (4200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// terminationGracePeriodSeconds of the run Pod. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,

    /// volumes allows additional volumes to be attached to the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// binariesCacheVolume is a special volume used to cache binaries like tool downloads (e.g.
    /// terraform, kubectl). It is always mounted at /opt/spacelift/binaries_cache. Defaults to an
    /// emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binaries_cache_volume: Option<Volume>,

    /// workspaceVolume is the volume shared between the init container and the worker container,
    /// populated with the repository content. It is always mounted at /opt/spacelift/workspace.
    /// Data stored in it is sensitive: keep it ephemeral and unshared. Defaults to an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_volume: Option<Volume>,

    /// serviceAccountName of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// automountServiceAccountToken of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,

    /// securityContext of the run Pod. runAsUser and runAsGroup default to 1983.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,

    /// imagePullSecrets of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// nodeSelector of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// nodeName of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// affinity of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// schedulerName of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,

    /// tolerations of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// hostAliases of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_aliases: Option<Vec<HostAlias>>,

    /// dnsConfig of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<PodDNSConfig>,

    /// runtimeClassName of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,

    /// shareProcessNamespace of the run Pod: the containers see each other's processes, so a
    /// preStop hook of the worker or launcher-grpc container can signal the run (for example
    /// to let it save its state when the node drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,

    /// topologySpreadConstraints of the run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// labels added to every run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// annotations added to every run Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// customBinariesPath adds directories to the start of the worker's PATH, before
    /// /opt/spacelift/binaries, e.g. "/bin" gives "/bin:/opt/spacelift/binaries:...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_binaries_path: Option<String>,

    /// customInitContainers run before the built-in init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_init_containers: Option<Vec<Container>>,

    /// launcherImage pins the image of the init and launcher-grpc containers. By default the
    /// backend sends the image for each run, which keeps runs compatible with the backend; pinning
    /// it is not recommended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_image: Option<String>,

    /// initContainer configures the container that prepares the workspace. The container name is
    /// "init".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!has(self.lifecycle)").message(
        "lifecycle hooks are not allowed on the init container (Kubernetes refuses them on init containers): set them on workerContainer or grpcServerContainer"
    ))]
    pub init_container: Option<ContainerOverride>,

    /// grpcServerContainer configures the side-car used by the worker to upload the workspace and
    /// to be notified of stop requests. The container name is "launcher-grpc".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_server_container: Option<ContainerOverride>,

    /// workerContainer configures the container that processes the run with the stack's runner
    /// image. The container name is "worker".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_container: Option<ContainerOverride>,

    /// additionalSidecarContainers are added to the run Pod as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_sidecar_containers: Option<Vec<Container>>,
}

/// Settings applied to one of the built-in containers (`init`, `launcher-grpc`, `worker`).
/// env, envFrom and volumeMounts are appended to the built-in ones; the others replace them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerOverride {
    /// envFrom sources appended to the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// env variables appended to the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// volumeMounts appended to the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// resources (requests, limits, claims) of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// securityContext of the container. The operator runs containers as UID/GID 1983 in a
    /// least-privileged context; overriding this may cause unexpected behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// imagePullPolicy of the container: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,
    /// lifecycle (postStart, preStop) of the container. Only for workerContainer and
    /// grpcServerContainer: Kubernetes refuses lifecycle hooks on init containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// What the operator observed of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// The poolSize the operator is working towards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_pool_size: Option<i32>,
    /// The number of Workers registered with the backend. Empty until the pool's credentials
    /// have been accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_pool_size: Option<i32>,
    /// Label selector of the pool's Workers, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The pool's ULID, read from its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ulid: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Registered, Degraded, HooksReady and (with spec.autoscaling) Autoscaling
    /// conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The autoscaler's last decision and its inputs (with spec.autoscaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

impl WorkerPool {
    /// The pod settings, or the defaults when `spec.pod` is absent.
    pub fn pod_template(&self) -> std::borrow::Cow<'_, PodTemplate> {
        match &self.spec.pod {
            Some(pod) => std::borrow::Cow::Borrowed(pod),
            None => std::borrow::Cow::Owned(PodTemplate::default()),
        }
    }
}
