//! A Helm release in the test cluster, and what its ServiceAccount may do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::chart::*;
use crate::support;

/// An installed release; uninstalled when dropped (cluster-scoped objects such as ClusterRoles
/// would otherwise outlive the test namespace).
pub struct Release {
    pub name: String,
    pub namespace: String,
    installed: bool,
}

impl Release {
    /// `helm install --wait` of `chart` into `namespace` (which must exist). Prints how long it
    /// took.
    pub fn install(chart: &Path, namespace: &str, args: &[String]) -> anyhow::Result<Self> {
        let name = support::unique_name("wpo");
        let started = Instant::now();
        let mut all: Vec<String> = vec![
            "install".into(),
            name.clone(),
            chart.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--wait".into(),
            "--timeout".into(),
            "120s".into(),
        ];
        all.extend(args.iter().cloned());
        helm_cluster(&all)?;
        eprintln!("helm install {name}: {:?}", started.elapsed());
        Ok(Self {
            name,
            namespace: namespace.into(),
            installed: true,
        })
    }

    pub fn upgrade(&self, chart: &Path, args: &[String]) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut all: Vec<String> = vec![
            "upgrade".into(),
            self.name.clone(),
            chart.display().to_string(),
            "--namespace".into(),
            self.namespace.clone(),
            "--wait".into(),
            "--timeout".into(),
            "120s".into(),
        ];
        all.extend(args.iter().cloned());
        helm_cluster(&all)?;
        eprintln!("helm upgrade {}: {:?}", self.name, started.elapsed());
        Ok(())
    }

    /// What the release installed (`helm get manifest`).
    pub fn manifest(&self) -> anyhow::Result<Rendering> {
        Rendering::parse(&helm_cluster([
            "get",
            "manifest",
            &self.name,
            "--namespace",
            &self.namespace,
        ])?)
    }

    /// The name of the chart's ServiceAccount.
    pub fn service_account(&self) -> String {
        format!("{}-workerpool-operator-controller-manager", self.name)
    }

    /// A client that is the chart's ServiceAccount and nothing more.
    pub async fn service_account_client(&self) -> anyhow::Result<Client> {
        support::service_account_client(&self.namespace, &self.service_account()).await
    }

    /// A kubeconfig file for the chart's ServiceAccount, for a subprocess.
    pub async fn service_account_kubeconfig(&self, path: &Path) -> anyhow::Result<PathBuf> {
        support::write_service_account_kubeconfig(&self.namespace, &self.service_account(), path)
            .await
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(mut self) -> anyhow::Result<()> {
        self.installed = false;
        let started = Instant::now();
        helm_cluster([
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "60s",
        ])?;
        eprintln!("helm uninstall {}: {:?}", self.name, started.elapsed());
        Ok(())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed
            && let Err(e) = helm_cluster(["uninstall", &self.name, "--namespace", &self.namespace])
        {
            eprintln!("warning: uninstalling {}: {e:#}", self.name);
        }
    }
}

/// One access check, as `kubectl auth can-i` would ask it.
#[derive(Clone, Debug)]
pub struct Access {
    pub verb: &'static str,
    pub group: &'static str,
    /// `resource` or `resource/subresource`.
    pub resource: &'static str,
    pub name: Option<String>,
    /// None: cluster-wide (all namespaces).
    pub namespace: Option<String>,
}

impl Access {
    pub fn new(verb: &'static str, group: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group,
            resource,
            name: None,
            namespace: None,
        }
    }

    pub fn in_ns(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Whether `client`'s identity may do `access` (a SelfSubjectAccessReview, which is what
/// `kubectl auth can-i` sends).
pub async fn can(client: &Client, access: &Access) -> anyhow::Result<bool> {
    let (resource, subresource) = access
        .resource
        .split_once('/')
        .map_or((access.resource, None), |(r, s)| (r, Some(s)));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": { "resourceAttributes": {
            "verb": access.verb,
            "group": access.group,
            "resource": resource,
            "subresource": subresource,
            "name": access.name,
            "namespace": access.namespace,
        }}
    }))?;
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("asking whether {access:?} is allowed"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Checks every access and reports all that came out differently from `expected` at once.
pub async fn expect_access(
    client: &Client,
    expected: bool,
    accesses: &[Access],
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for access in accesses {
        if can(client, access).await? != expected {
            wrong.push(format!("{access:?}"));
        }
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "expected {} but got the opposite for:\n  {}",
        if expected { "allowed" } else { "denied" },
        wrong.join("\n  ")
    );
    Ok(())
}

/// Every verb of [`MANAGER_RULES`], in `namespace` (None: all namespaces).
pub fn manager_accesses(namespace: Option<&str>) -> Vec<Access> {
    MANAGER_RULES
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(move |verb| Access {
                verb,
                group,
                resource,
                name: None,
                namespace: namespace.map(str::to_owned),
            })
        })
        .collect()
}
