//! `spacelift-worker`, the `worker` container in the runner image: reads
//! `<workspace>/job.json`, runs the stage's commands one after the other in the working
//! directory (argv, no shell; the container's environment plus the job's, `PATH` from the
//! container so the binaries directory comes first), streams every line through
//! `launcher-grpc`, uploads the workspace when the stage succeeded and asks for it, always
//! calls `Finish`, and exits with the stage's code ([`ending`]). It holds no key: everything
//! that reaches the backend goes through `launcher-grpc`.

mod command;
pub mod ending;
mod output;
mod stops;

use std::path::PathBuf;
use std::time::Duration;

use launcher_api::{Job, layout};
use thiserror::Error;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::duration::{DurationError, parse_go_duration};
use crate::proto::launcher_client::LauncherClient;
use crate::proto::{UploadWorkspaceRequest, WatchStopRequest};
use crate::settings::{self, Addresses, Paths, SettingsError};
use ending::{Ending, display_argv};
use output::Output;
use stops::Stops;

/// How long the worker waits for `launcher-grpc` to listen (the containers start together).
const CONNECT_WITHIN: Duration = Duration::from_secs(60);
/// Time left after SIGKILL for the last lines and `Finish`.
const KILL_MARGIN: Duration = Duration::from_secs(5);
/// Bounds on the calls at the end of the stage.
const UPLOAD_WITHIN: Duration = Duration::from_secs(20 * 60);
const LOGS_CLOSE_WITHIN: Duration = Duration::from_secs(30);
const FINISH_WITHIN: Duration = Duration::from_secs(90);
/// job.json is written by `init`; this is far more than any job.
const MAX_JOB_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{variable} is not usable")]
    Timeout {
        variable: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("the job cannot be read from {}: did the init container run?", path.display())]
    ReadJob {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a job", path.display())]
    ParseJob {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("launcher-grpc is not listening on {address} after {CONNECT_WITHIN:?}")]
    Connect {
        address: std::net::SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot watch for SIGTERM")]
    Signal(#[source] std::io::Error),
}

/// Runs the worker; returns the process exit code.
pub async fn main() -> u8 {
    let env = settings::process_env;
    let paths = Paths::from_env(&env);
    match run(&env, &paths).await {
        Ok(ending) => {
            if ending != Ending::Succeeded {
                crate::termination::write(&paths.termination_log, &ending.message());
            }
            ending.exit_code()
        }
        Err(err) => {
            let reason = format!("spacelift-worker failed: {}", crate::chain(&err));
            eprintln!("{reason}");
            crate::termination::write(&paths.termination_log, &reason);
            ending::LAUNCHER_FAILED
        }
    }
}

/// Reads a timeout variable: a Go duration; unset or zero means none.
fn timeout(
    env: &dyn Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<Option<Duration>, WorkerError> {
    match env(variable).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(value) => parse_go_duration(&value)
            .map(|d| Some(d).filter(|d| !d.is_zero()))
            .map_err(|source| WorkerError::Timeout { variable, source }),
    }
}

async fn run(env: &dyn Fn(&str) -> Option<String>, paths: &Paths) -> Result<Ending, WorkerError> {
    let started = Instant::now();
    let grace = settings::grace(env)?;
    let addresses = Addresses::from_env(env)?;
    let run_timeout = timeout(env, layout::ENV_RUN_TIMEOUT)?;
    let logs_timeout = timeout(env, layout::ENV_LOGS_TIMEOUT)?;
    let job = read_job(paths)?;

    let stops = Stops::default();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(WorkerError::Signal)?;
    let on_sigterm = stops.clone();
    tokio::spawn(async move {
        if sigterm.recv().await.is_some() {
            on_sigterm.stop("the run Pod is being deleted (SIGTERM)".into());
        }
    });
    if let Some(after) = run_timeout {
        let on_timeout = stops.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(started + after).await;
            on_timeout.run_timed_out(after);
        });
    }

    let client = connect(addresses.grpc).await?;
    let output = Output::start(&client);
    watch_stop(&client, &stops);

    let kill_after = grace
        .saturating_sub(KILL_MARGIN)
        .max(Duration::from_secs(1));
    let mut ending = run_commands(paths, &job, &output, &stops, logs_timeout, kill_after).await;
    if ending == Ending::Succeeded && job.upload_workspace {
        ending = upload(&client, &output).await;
    }
    output.system(&ending.message()).await;
    if let Err(why) = output.close(LOGS_CLOSE_WITHIN).await {
        crate::note(&why);
    }
    finish(&client, &ending).await;
    Ok(ending)
}

fn read_job(paths: &Paths) -> Result<Job, WorkerError> {
    let path = paths.workspace.join(layout::JOB_FILE);
    let read_error = |source| WorkerError::ReadJob {
        path: path.clone(),
        source,
    };
    let size = std::fs::metadata(&path).map_err(read_error)?.len();
    if size > MAX_JOB_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "{size} bytes, more than {MAX_JOB_BYTES}"
        ))));
    }
    let bytes = std::fs::read(&path).map_err(read_error)?;
    serde_json::from_slice(&bytes).map_err(|source| WorkerError::ParseJob { path, source })
}

async fn connect(address: std::net::SocketAddr) -> Result<LauncherClient<Channel>, WorkerError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|source| WorkerError::Connect { address, source })?
        .connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + CONNECT_WITHIN;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(LauncherClient::new(channel)),
            Err(source) if Instant::now() >= deadline => {
                return Err(WorkerError::Connect { address, source });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Holds a `WatchStop` stream for the whole stage: a notice stops the command, and while the
/// stream is open `launcher-grpc` knows the worker is alive.
fn watch_stop(client: &LauncherClient<Channel>, stops: &Stops) {
    let mut client = client.clone();
    let stops = stops.clone();
    tokio::spawn(async move {
        let mut notices = match client.watch_stop(WatchStopRequest {}).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                crate::note(&format!("cannot watch for stops: {}", status.message()));
                return;
            }
        };
        if let Ok(Some(notice)) = notices.message().await {
            stops.stop(notice.reason);
        }
        // Kept open until the server ends it.
        while let Ok(Some(_)) = notices.message().await {}
    });
}

async fn run_commands(
    paths: &Paths,
    job: &Job,
    output: &Output,
    stops: &Stops,
    logs_timeout: Option<Duration>,
    kill_after: Duration,
) -> Ending {
    let dir = paths.workspace.join(&job.working_directory);
    // The container's PATH stays: it puts the binaries directory first.
    let mut env = job.environment.clone();
    if env.remove("PATH").is_some() {
        output
            .system("the job's PATH is ignored: the container's PATH puts the binaries first")
            .await;
    }
    for command in &job.commands {
        let argv = display_argv(&command.argv);
        if let Some(cause) = stops.current() {
            return Ending::Interrupted {
                command: command.name.clone(),
                interruption: cause.interruption,
            };
        }
        output.system(&format!("$ {argv}")).await;
        let spec = command::Spec {
            argv: &command.argv,
            dir: &dir,
            env: &env,
            logs_timeout,
            kill_after,
        };
        let end = command::run(&spec, output, stops).await;
        if let Some(cause) = stops.current() {
            output
                .system(&format!("command {} was interrupted", command.name))
                .await;
            return Ending::Interrupted {
                command: command.name.clone(),
                interruption: cause.interruption,
            };
        }
        match end {
            command::CommandEnd::Exited(0) => {
                output
                    .system(&format!("command {} exited with code 0", command.name))
                    .await;
            }
            command::CommandEnd::Exited(code) => {
                let ending = Ending::Failed {
                    command: command.name.clone(),
                    argv,
                    code,
                };
                output
                    .system(&format!("command {} exited with code {code}", command.name))
                    .await;
                return ending;
            }
            command::CommandEnd::NotStarted(code, why) => {
                return Ending::NotStarted {
                    command: command.name.clone(),
                    argv,
                    code,
                    why,
                };
            }
        }
    }
    Ending::Succeeded
}

async fn upload(client: &LauncherClient<Channel>, output: &Output) -> Ending {
    output
        .system("uploading the workspace for the next stage")
        .await;
    let mut client = client.clone();
    let answer = tokio::time::timeout(
        UPLOAD_WITHIN,
        client.upload_workspace(UploadWorkspaceRequest {}),
    )
    .await;
    match answer {
        Ok(Ok(uploaded)) => {
            let uploaded = uploaded.into_inner();
            output
                .system(&format!(
                    "workspace uploaded: {} bytes, sha256 {}",
                    uploaded.size, uploaded.sha256
                ))
                .await;
            Ending::Succeeded
        }
        Ok(Err(status)) => Ending::LauncherFailed {
            message: format!("the workspace upload failed: {}", status.message()),
        },
        Err(_) => Ending::LauncherFailed {
            message: format!("the workspace upload did not finish within {UPLOAD_WITHIN:?}"),
        },
    }
}

async fn finish(client: &LauncherClient<Channel>, ending: &Ending) {
    let mut client = client.clone();
    match tokio::time::timeout(FINISH_WITHIN, client.finish(ending.finish_request())).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            if !response.message.is_empty() {
                crate::note(&response.message);
            }
        }
        Ok(Err(status)) => crate::note(&format!("Finish failed: {}", status.message())),
        Err(_) => crate::note(&format!("Finish did not answer within {FINISH_WITHIN:?}")),
    }
}
