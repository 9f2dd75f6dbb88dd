//! `spacelift-launcher init`, the run Pod's init container: proves it is the worker, fetches
//! the stage's job, lays out the workspace, installs the tool into the binaries cache and
//! copies itself to `<binaries>/spacelift-worker`. Its own lines go to stdout and to the
//! backend (part `init`). A failure exits non-zero with a one-line reason in the termination
//! message, which the operator puts into `run.finished`.

mod workspace;

use std::time::Duration;

use launcher_api::{Claims, Job, LogPart, LogStream, layout};
use thiserror::Error;

use crate::backend::{Backend, BackendError};
use crate::cache::{self, CacheError, Slot};
use crate::identity::{IdentityError, read_identity};
use crate::logs::Forwarder;
use crate::settings::{self, Addresses, Paths, SettingsError};
pub use workspace::{InitReport, WorkspaceError};

/// The largest tool binary downloaded.
const MAX_TOOL_BYTES: u64 = 1024 * 1024 * 1024;
/// How long the last lines get to reach the backend.
const FLUSH_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the launcher API client cannot be set up")]
    Client(#[source] Box<BackendError>),
    #[error("the job cannot be fetched")]
    Job(#[source] Box<BackendError>),
    #[error("the backend sent a job for {got}, but this Pod is for {want}")]
    OtherJob { got: String, want: String },
    #[error("the job has apiVersion {0}; this launcher speaks {API}", API = launcher_api::API_VERSION)]
    ApiVersion(u32),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("tool {name} {version} is {size} bytes, more than the {MAX_TOOL_BYTES} allowed")]
    ToolTooLarge {
        name: String,
        version: String,
        size: u64,
    },
    #[error("tool {name} {version} cannot be downloaded")]
    Tool {
        name: String,
        version: String,
        #[source]
        source: Box<BackendError>,
    },
    #[error("{what} at {}", path.display())]
    Install {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `init`; returns the process exit code.
pub async fn main() -> u8 {
    let env = settings::process_env;
    let paths = Paths::from_env(&env);
    let (backend, logs) = match connect(&env, &paths) {
        Ok(connected) => connected,
        Err(err) => return fail(&paths, None, &err).await,
    };
    let say = Say { logs: &logs };
    match run(&env, &paths, &backend, &say).await {
        Ok(()) => {
            let delivery = logs.flush(FLUSH_WITHIN).await;
            if let Some(why) = delivery.refused {
                crate::note(&format!("init's log did not all reach the backend: {why}"));
            }
            0
        }
        Err(err) => fail(&paths, Some(&logs), &err).await,
    }
}

fn connect(
    env: &dyn Fn(&str) -> Option<String>,
    paths: &Paths,
) -> Result<(Backend, Forwarder), InitError> {
    let claims = settings::claims(env)?;
    let endpoint = settings::endpoint(env)?;
    let identity = read_identity(&paths.identity, claims)?;
    let backend =
        Backend::new(identity, endpoint).map_err(|err| InitError::Client(Box::new(err)))?;
    let logs = Forwarder::start(backend.clone(), LogPart::Init);
    Ok((backend, logs))
}

/// Prints a line and sends it to the backend.
struct Say<'a> {
    logs: &'a Forwarder,
}

impl Say<'_> {
    async fn line(&self, text: &str) {
        println!("{text}");
        self.logs.send(LogStream::System, text).await;
    }
}

async fn run(
    env: &dyn Fn(&str) -> Option<String>,
    paths: &Paths,
    backend: &Backend,
    say: &Say<'_>,
) -> Result<(), InitError> {
    let claims = backend.claims().clone();
    say.line(&format!(
        "init: run {} stage {} attempt {} on worker {}",
        claims.run, claims.stage, claims.attempt, claims.worker
    ))
    .await;
    let job: Job = backend
        .get_json("job")
        .await
        .map_err(|err| InitError::Job(Box::new(err)))?;
    check_job(&job, &claims)?;
    say.line(&format!(
        "job: {} run of stack {}, {} command(s), tool {} {}",
        match job.kind {
            launcher_api::RunKind::Tracked => "tracked",
            launcher_api::RunKind::Proposed => "proposed",
        },
        job.stack,
        job.commands.len(),
        job.tool.name,
        job.tool.version
    ))
    .await;

    let addresses = Addresses::from_env(env)?;
    let place = workspace::Layout::new(paths, &job)?;
    if let Some(source) = &job.source {
        say.line(&format!("fetching the source ({} bytes)", source.size))
            .await;
        let unpacked = place.fetch_source(backend, source).await?;
        say.line(&format!(
            "source laid out: {} entries, {} bytes",
            unpacked.entries, unpacked.bytes
        ))
        .await;
    }
    if let Some(earlier) = &job.workspace {
        say.line(&format!(
            "fetching the workspace an earlier stage uploaded ({} bytes)",
            earlier.size
        ))
        .await;
        let unpacked = place.fetch_workspace(backend, earlier).await?;
        say.line(&format!(
            "workspace laid out: {} entries, {} bytes",
            unpacked.entries, unpacked.bytes
        ))
        .await;
    }
    place.write_job(&job)?;
    if job.managed_state {
        let path = place.write_state_override(addresses.state_proxy)?;
        say.line(&format!(
            "state managed by the backend: wrote {}",
            path.display()
        ))
        .await;
    }

    let tool_cache = install_tool(paths, backend, &job, say).await?;
    place.write_report(&InitReport { tool_cache })?;
    let worker = paths.binaries.join(layout::WORKER_BINARY_NAME);
    cache::copy_self(&worker).map_err(|source| InitError::Install {
        what: "the worker binary cannot be installed",
        path: worker.clone(),
        source,
    })?;
    say.line(&format!("installed {}", worker.display())).await;
    say.line("init done").await;
    Ok(())
}

fn check_job(job: &Job, claims: &Claims) -> Result<(), InitError> {
    if job.api_version != launcher_api::API_VERSION {
        return Err(InitError::ApiVersion(job.api_version));
    }
    let got = format!(
        "run {} stage {} attempt {}",
        job.run_id, job.stage, job.attempt
    );
    let want = format!(
        "run {} stage {} attempt {}",
        claims.run, claims.stage, claims.attempt
    );
    if got != want {
        return Err(InitError::OtherJob { got, want });
    }
    Ok(())
}

async fn install_tool(
    paths: &Paths,
    backend: &Backend,
    job: &Job,
    say: &Say<'_>,
) -> Result<launcher_api::ToolCache, InitError> {
    let tool = &job.tool;
    let slot = Slot::new(&paths.binaries_cache, tool)?;
    let found = slot.lookup()?;
    match found {
        launcher_api::ToolCache::Hit => {
            say.line(&format!(
                "tool {} {}: cache hit ({})",
                tool.name,
                tool.version,
                slot.path.display()
            ))
            .await;
        }
        launcher_api::ToolCache::Miss => {
            say.line(&format!(
                "tool {} {}: cache miss, downloading {} bytes",
                tool.name, tool.version, tool.size
            ))
            .await;
            if tool.size > MAX_TOOL_BYTES {
                return Err(InitError::ToolTooLarge {
                    name: tool.name.clone(),
                    version: tool.version.clone(),
                    size: tool.size,
                });
            }
            let temporary = slot.temporary()?;
            let leaf = format!("tools/{}/{}", tool.name, tool.version);
            let artifact = launcher_api::Artifact {
                sha256: tool.sha256.clone(),
                size: tool.size,
            };
            if let Err(source) = backend.download(&leaf, &artifact, &temporary).await {
                let _ = std::fs::remove_file(&temporary);
                return Err(InitError::Tool {
                    name: tool.name.clone(),
                    version: tool.version.clone(),
                    source: Box::new(source),
                });
            }
            slot.commit(&temporary)?;
            say.line(&format!("tool installed into {}", slot.path.display()))
                .await;
        }
    }
    let link = cache::link_into(&paths.binaries, &tool.name, &slot.path).map_err(|source| {
        InitError::Install {
            what: "the tool cannot be linked into the binaries directory",
            path: paths.binaries.join(&tool.name),
            source,
        }
    })?;
    say.line(&format!(
        "linked {} -> {}",
        link.display(),
        slot.path.display()
    ))
    .await;
    Ok(found)
}

/// Reports a failure everywhere a user may look: stdout, the backend (if reachable), the
/// termination message.
async fn fail(paths: &Paths, logs: Option<&Forwarder>, err: &InitError) -> u8 {
    let reason = format!("init failed: {}", crate::chain(err));
    println!("{reason}");
    if let Some(logs) = logs {
        logs.send(LogStream::System, &reason).await;
        logs.flush(FLUSH_WITHIN).await;
    }
    crate::termination::write(&paths.termination_log, &reason);
    1
}
