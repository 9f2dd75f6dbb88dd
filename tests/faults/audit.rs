//! The kube-apiserver's own audit log (testenv writes it; see tests/testenv/testenv): what the
//! API server did, whatever the operator believes it did.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::support;

/// The audit log of the test cluster.
pub struct Audit {
    path: PathBuf,
}

impl Audit {
    pub fn open() -> anyhow::Result<Self> {
        let dir = support::cluster()
            .kubeconfig
            .parent()
            .context("the kubeconfig's directory")?
            .to_path_buf();
        let path = dir.join("logs/audit.log");
        if !path.is_file() {
            bail!(
                "{} does not exist: this control plane was started before testenv wrote an audit log; restart it (tests/testenv/testenv down && tests/testenv/testenv up)",
                path.display()
            );
        }
        Ok(Self { path })
    }

    fn events(&self) -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|e: &Value| e["stage"] == "ResponseComplete")
            .collect())
    }

    /// How many times each Pod of `namespace` was created (successful creates only).
    pub fn pod_creates(&self, namespace: &str) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut creates = BTreeMap::new();
        for event in self.events()? {
            let object = &event["objectRef"];
            let code = event["responseStatus"]["code"].as_i64().unwrap_or(0);
            if event["verb"] == "create"
                && object["resource"] == "pods"
                && object["subresource"].is_null()
                && object["namespace"] == namespace
                && (200..300).contains(&code)
            {
                let name = object["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .or_else(|| event["requestObject"]["metadata"]["name"].as_str())
                    .unwrap_or_default()
                    .to_string();
                *creates.entry(name).or_default() += 1;
            }
        }
        Ok(creates)
    }

    /// How many writes by `user` to `resource` (e.g. `workers/status`, `pods`) in `namespace`
    /// were refused (a 4xx or 5xx answer).
    pub fn refused(&self, namespace: &str, user: &str, resource: &str) -> anyhow::Result<usize> {
        Ok(self
            .events()?
            .iter()
            .filter(|e| {
                let object = &e["objectRef"];
                let full = match object["subresource"].as_str() {
                    Some(sub) => {
                        format!("{}/{sub}", object["resource"].as_str().unwrap_or_default())
                    }
                    None => object["resource"].as_str().unwrap_or_default().to_string(),
                };
                e["user"]["username"] == user
                    && object["namespace"] == namespace
                    && full == resource
                    && e["responseStatus"]["code"].as_i64().unwrap_or(0) >= 400
            })
            .count())
    }
}
