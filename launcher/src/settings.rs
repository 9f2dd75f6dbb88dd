//! What the run Pod tells the launcher through its environment: who it works for, where the
//! backend is, and where things are.
//!
//! The paths and addresses are the seed's (launcher_api::layout). Each can be moved by a
//! `SPACELIFT_LAUNCHER_TEST_*` variable so the tests can run the three roles as plain processes
//! in temporary directories; those variables are for tests only and the operator never sets
//! them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use launcher_api::{Claims, layout};
use thiserror::Error;

/// Test-only: moves the workspace.
pub const ENV_TEST_WORKSPACE: &str = "SPACELIFT_LAUNCHER_TEST_WORKSPACE";
/// Test-only: moves the binaries directory.
pub const ENV_TEST_BINARIES: &str = "SPACELIFT_LAUNCHER_TEST_BINARIES";
/// Test-only: moves the binaries cache.
pub const ENV_TEST_BINARIES_CACHE: &str = "SPACELIFT_LAUNCHER_TEST_BINARIES_CACHE";
/// Test-only: moves the identity directory (worker key and pool token).
pub const ENV_TEST_IDENTITY: &str = "SPACELIFT_LAUNCHER_TEST_IDENTITY";
/// Test-only: moves the termination message file.
pub const ENV_TEST_TERMINATION_LOG: &str = "SPACELIFT_LAUNCHER_TEST_TERMINATION_LOG";
/// Test-only: moves the gRPC server's address.
pub const ENV_TEST_GRPC_ADDRESS: &str = "SPACELIFT_LAUNCHER_TEST_GRPC_ADDRESS";
/// Test-only: moves the state proxy's address.
pub const ENV_TEST_STATE_PROXY_ADDRESS: &str = "SPACELIFT_LAUNCHER_TEST_STATE_PROXY_ADDRESS";
/// How long the launcher's programs have after a stop (or SIGTERM) before they must be done,
/// in seconds. Default [`DEFAULT_GRACE`]: the Pod's default terminationGracePeriodSeconds is
/// 30, which leaves the kubelet 5 s of margin.
pub const ENV_GRACE_SECONDS: &str = "SPACELIFT_LAUNCHER_GRACE_SECONDS";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Where Kubernetes reads a container's termination message from (its default
/// terminationMessagePath).
const TERMINATION_LOG: &str = "/dev/termination-log";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is not valid: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
}

/// The run stage attempt this Pod processes, and for whom: the claims of every signed request.
pub fn claims(env: &dyn Fn(&str) -> Option<String>) -> Result<Claims, SettingsError> {
    const HINT: &str = "the operator sets it on every run Pod container: is this a run Pod?";
    let required = |name: &'static str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
            .ok_or(SettingsError::Missing { name, hint: HINT })
    };
    let attempt = required(layout::ENV_ATTEMPT)?;
    Ok(Claims {
        pool: required(layout::ENV_POOL)?,
        worker: required(layout::ENV_WORKER)?,
        run: required(layout::ENV_RUN)?,
        stage: required(layout::ENV_STAGE)?,
        attempt: attempt
            .parse()
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| SettingsError::Invalid {
                name: layout::ENV_ATTEMPT,
                value: attempt.clone(),
                why: "an attempt is a number from 1".into(),
            })?,
    })
}

/// The launcher API's base URL, `https://host:port`.
pub fn endpoint(env: &dyn Fn(&str) -> Option<String>) -> Result<reqwest::Url, SettingsError> {
    let value = env(layout::ENV_ENDPOINT)
        .filter(|v| !v.trim().is_empty())
        .ok_or(SettingsError::Missing {
            name: layout::ENV_ENDPOINT,
            hint: "the run schedule carried no launcherEndpoint: start the backend with its launcher API enabled",
        })?;
    let invalid = |why: &str| SettingsError::Invalid {
        name: layout::ENV_ENDPOINT,
        value: value.clone(),
        why: why.to_string(),
    };
    let url = reqwest::Url::parse(value.trim()).map_err(|err| invalid(&err.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("the launcher API is HTTPS only"));
    }
    if url.host_str().is_none() || url.path() != "/" || url.query().is_some() {
        return Err(invalid("expected https://host[:port] with no path"));
    }
    Ok(url)
}

/// The directories and files the roles share, as mounted in the run Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub workspace: PathBuf,
    pub binaries: PathBuf,
    pub binaries_cache: PathBuf,
    pub identity: PathBuf,
    pub termination_log: PathBuf,
}

impl Paths {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let path = |name: &str, default: &str| {
            PathBuf::from(
                env(name)
                    .filter(|v| !v.is_empty())
                    .unwrap_or(default.into()),
            )
        };
        Self {
            workspace: path(ENV_TEST_WORKSPACE, layout::WORKSPACE_PATH),
            binaries: path(ENV_TEST_BINARIES, layout::BINARIES_PATH),
            binaries_cache: path(ENV_TEST_BINARIES_CACHE, layout::BINARIES_CACHE_PATH),
            identity: path(ENV_TEST_IDENTITY, layout::IDENTITY_PATH),
            termination_log: path(ENV_TEST_TERMINATION_LOG, TERMINATION_LOG),
        }
    }

    /// The launcher's own files inside the workspace (downloads in progress, what `init`
    /// tells `launcher-grpc`): never uploaded.
    pub fn scratch(&self) -> PathBuf {
        self.workspace.join(layout::LAUNCHER_DIR)
    }
}

/// The loopback addresses of `launcher-grpc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub grpc: SocketAddr,
    pub state_proxy: SocketAddr,
}

impl Addresses {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let address = |name: &'static str, default: &str| {
            let value = env(name).filter(|v| !v.is_empty());
            value
                .as_deref()
                .unwrap_or(default)
                .parse()
                .map_err(|_| SettingsError::Invalid {
                    name,
                    value: value.clone().unwrap_or_default(),
                    why: "expected ip:port".into(),
                })
        };
        Ok(Self {
            grpc: address(ENV_TEST_GRPC_ADDRESS, layout::GRPC_ADDRESS)?,
            state_proxy: address(ENV_TEST_STATE_PROXY_ADDRESS, layout::STATE_PROXY_ADDRESS)?,
        })
    }
}

/// [`ENV_GRACE_SECONDS`], or its default.
pub fn grace(env: &dyn Fn(&str) -> Option<String>) -> Result<Duration, SettingsError> {
    match env(ENV_GRACE_SECONDS).filter(|v| !v.trim().is_empty()) {
        None => Ok(DEFAULT_GRACE),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or(SettingsError::Invalid {
                name: ENV_GRACE_SECONDS,
                value,
                why: "expected a whole number of seconds, 1 or more".into(),
            }),
    }
}

/// The process environment, for the functions above.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_missing_endpoint_says_the_schedule_had_none() {
        let err = endpoint(&env(&[])).unwrap_err().to_string();
        assert_eq!(
            err,
            "SPACELIFT_LAUNCHER_ENDPOINT is not set: the run schedule carried no launcherEndpoint: start the backend with its launcher API enabled"
        );
        for bad in ["http://10.0.0.1:8443", "https://b:1/x", "nonsense"] {
            let err = endpoint(&env(&[(layout::ENV_ENDPOINT, bad)])).unwrap_err();
            assert!(matches!(err, SettingsError::Invalid { .. }), "{bad}: {err}");
        }
        let url = endpoint(&env(&[(layout::ENV_ENDPOINT, "https://127.0.0.1:8443")])).unwrap();
        assert_eq!(url.as_str(), "https://127.0.0.1:8443/");
    }

    #[test]
    fn claims_name_the_missing_variable_and_refuse_attempt_zero() {
        let mut pairs = vec![
            (layout::ENV_POOL, "01HPS9HDSWCQ73RPDTVAK0KK0A"),
            (layout::ENV_WORKER, "01HPS6K4BNB7BPHCDHDWFAMJNV"),
            (layout::ENV_RUN, "01HN37WC3MCNE3CY9HAHWRF06K"),
            (layout::ENV_STAGE, "planning"),
        ];
        let err = claims(&env(&pairs)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SPACELIFT_RUN_ATTEMPT is not set"),
            "{err}"
        );
        pairs.push((layout::ENV_ATTEMPT, "0"));
        assert!(matches!(
            claims(&env(&pairs)),
            Err(SettingsError::Invalid {
                name: "SPACELIFT_RUN_ATTEMPT",
                ..
            })
        ));
        pairs.pop();
        pairs.push((layout::ENV_ATTEMPT, "2"));
        let claims = claims(&env(&pairs)).unwrap();
        assert_eq!((claims.stage.as_str(), claims.attempt), ("planning", 2));
    }

    #[test]
    fn paths_default_to_the_seeds_and_move_only_by_test_variables() {
        let paths = Paths::from_env(&env(&[]));
        assert_eq!(paths.workspace, PathBuf::from("/opt/spacelift/workspace"));
        assert_eq!(
            paths.binaries_cache,
            PathBuf::from("/opt/spacelift/binaries_cache")
        );
        assert_eq!(paths.termination_log, PathBuf::from("/dev/termination-log"));
        let moved = Paths::from_env(&env(&[(ENV_TEST_WORKSPACE, "/tmp/w")]));
        assert_eq!(moved.workspace, PathBuf::from("/tmp/w"));
        assert_eq!(moved.scratch(), PathBuf::from("/tmp/w/.spacelift"));
        let addresses = Addresses::from_env(&env(&[])).unwrap();
        assert_eq!(addresses.grpc.to_string(), "127.0.0.1:7946");
        assert_eq!(grace(&env(&[])).unwrap(), DEFAULT_GRACE);
        assert!(grace(&env(&[(ENV_GRACE_SECONDS, "soon")])).is_err());
    }
}
