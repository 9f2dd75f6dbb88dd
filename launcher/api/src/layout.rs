//! Where things are: the run Pod's paths, ports and environment variables, which the operator's
//! Pod builder and the launcher both use, and the launcher API's URL paths.

/// The run's workspace (the seed's path), shared by `init`, `launcher-grpc` and `worker`.
pub const WORKSPACE_PATH: &str = "/opt/spacelift/workspace";
/// The binaries cache (the seed's path): tools, kept across runs when the volume is persistent.
pub const BINARIES_CACHE_PATH: &str = "/opt/spacelift/binaries_cache";
/// The run's binaries (the seed's path): `spacelift-worker` and the stage's tool, first on the
/// worker's `PATH`.
pub const BINARIES_PATH: &str = "/opt/spacelift/binaries";
/// The worker's identity, mounted read-only into `init` and `launcher-grpc` only: the worker's
/// private key and the pool token (for the backend's CA).
pub const IDENTITY_PATH: &str = "/opt/spacelift/identity";
/// The worker's private key (PKCS#8 PEM) under [`IDENTITY_PATH`].
pub const IDENTITY_KEY_FILE: &str = "worker.key";
/// The pool token (as stored in the pool's Secret: base64 of the token JSON) under
/// [`IDENTITY_PATH`].
pub const IDENTITY_TOKEN_FILE: &str = "pool.token";

/// The job `init` writes for the worker, relative to the workspace.
pub const JOB_FILE: &str = "job.json";
/// The launcher's own files inside the workspace (downloads in progress, what `init` tells
/// `launcher-grpc`), relative to the workspace: never part of an uploaded workspace.
pub const LAUNCHER_DIR: &str = ".spacelift";
/// Where `init` lays out the stack's source, relative to the workspace.
pub const SOURCE_DIR: &str = "source";
/// The plan a planning stage saves and an applying stage applies, relative to the working
/// directory.
pub const PLAN_FILE: &str = "spacelift.plan";
/// The backend override `init` writes into the working directory when the state is managed.
pub const STATE_OVERRIDE_FILE: &str = "spacelift_backend_override.tf";

/// The launcher binary in the launcher image (the seed's path).
pub const LAUNCHER_BINARY: &str = "/usr/bin/spacelift-launcher";
/// The name the launcher answers to as the worker; `init` copies itself to
/// `<binaries>/spacelift-worker`.
pub const WORKER_BINARY_NAME: &str = "spacelift-worker";

/// The gRPC server of `launcher-grpc`, on the Pod's loopback (all containers share it).
pub const GRPC_ADDRESS: &str = "127.0.0.1:7946";
/// The state proxy of `launcher-grpc` (OpenTofu's `http` backend points here), on loopback.
pub const STATE_PROXY_ADDRESS: &str = "127.0.0.1:7947";

/// Environment of `init` and `launcher-grpc`: the launcher API's base URL
/// (`https://host:port`), from the run's schedule.
pub const ENV_ENDPOINT: &str = "SPACELIFT_LAUNCHER_ENDPOINT";
/// Environment of the built-in containers: the pool, worker and run they work for.
pub const ENV_POOL: &str = "SPACELIFT_WORKER_POOL_ULID";
pub const ENV_WORKER: &str = "SPACELIFT_WORKER_ULID";
pub const ENV_RUN: &str = "SPACELIFT_RUN_ULID";
pub const ENV_STAGE: &str = "SPACELIFT_RUN_STAGE";
pub const ENV_ATTEMPT: &str = "SPACELIFT_RUN_ATTEMPT";
/// Environment of the worker: the run timeout and the log-silence timeout, Go durations.
pub const ENV_RUN_TIMEOUT: &str = "SPACELIFT_LAUNCHER_RUN_TIMEOUT";
pub const ENV_LOGS_TIMEOUT: &str = "SPACELIFT_LAUNCHER_LOGS_TIMEOUT";

/// The prefix of every launcher API path.
pub const API_PREFIX: &str = "/launcher/v1";

/// The path of a resource of one run stage attempt: `/launcher/v1/runs/<run>/stages/<stage>/
/// attempts/<attempt>/<leaf>`, where `leaf` is `job`, `source`, `workspace`, `logs`, `result`,
/// `stop`, `state`, `state/lock` or `tools/<name>/<version>`.
pub fn stage_path(run: &str, stage: &str, attempt: u32, leaf: &str) -> String {
    format!("{API_PREFIX}/runs/{run}/stages/{stage}/attempts/{attempt}/{leaf}")
}

/// The run stage attempt a launcher API path names, and the rest of the path (the leaf), or
/// `None` when the path is not a stage path.
pub fn parse_stage_path(path: &str) -> Option<(&str, &str, u32, &str)> {
    let rest = path.strip_prefix(API_PREFIX)?.strip_prefix("/runs/")?;
    let (run, rest) = rest.split_once("/stages/")?;
    let (stage, rest) = rest.split_once("/attempts/")?;
    let (attempt, leaf) = rest.split_once('/')?;
    let attempt = attempt.parse().ok().filter(|a| *a > 0)?;
    (!run.is_empty() && !stage.is_empty() && !leaf.is_empty())
        .then_some((run, stage, attempt, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_paths_round_trip() {
        let path = stage_path("01HN37WC3MCNE3CY9HAHWRF06K", "planning", 2, "state/lock");
        assert_eq!(
            path,
            "/launcher/v1/runs/01HN37WC3MCNE3CY9HAHWRF06K/stages/planning/attempts/2/state/lock"
        );
        assert_eq!(
            parse_stage_path(&path),
            Some(("01HN37WC3MCNE3CY9HAHWRF06K", "planning", 2, "state/lock"))
        );
        assert_eq!(
            parse_stage_path("/launcher/v1/runs/x/stages/y/attempts/0/job"),
            None
        );
        assert_eq!(parse_stage_path("/api/runs"), None);
    }
}
