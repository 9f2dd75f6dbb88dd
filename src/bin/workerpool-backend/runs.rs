//! `run ...`: bare runs, stack runs, their logs.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use workerpool_operator::backend::client;
use workerpool_operator::backend::store::{LogEntry, SubmitRun, TriggerRun};

use crate::key_value;

#[derive(Subcommand)]
pub enum RunCommand {
    /// Queue a bare run: one stage, no stack (the launcher has no job for it).
    Submit {
        /// Pool name or ULID.
        #[arg(long)]
        pool: String,
        /// Runner image.
        #[arg(long)]
        image: Option<String>,
        /// Stage.
        #[arg(long, default_value = "preparing")]
        stage: String,
        /// Launcher image (default: the backend's).
        #[arg(long)]
        launcher_image: Option<String>,
        /// Run timeout in seconds.
        #[arg(long)]
        timeout_seconds: Option<u64>,
        /// Run metadata passed to the worker (and its hooks), as KEY=VALUE; repeatable.
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Trigger a run of a stack: tracked (plan, confirm, apply) or proposed (plan only).
    Trigger {
        /// Stack name.
        #[arg(long)]
        stack: String,
        /// Only plan.
        #[arg(long)]
        proposed: bool,
    },
    /// Confirm an unconfirmed tracked run: its plan is applied.
    Confirm {
        /// Run ULID.
        id: String,
    },
    /// Print a run's logs: stage by stage, init part then worker part.
    Logs {
        /// Run ULID.
        id: String,
        /// Only this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Keep printing new lines until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// List runs, newest first.
    List {
        /// Only this pool (name or ULID).
        #[arg(long)]
        pool: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Stop a run.
    Stop {
        /// Run ULID.
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// How often `run logs -f` asks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(backend_url: &str, command: RunCommand) -> anyhow::Result<()> {
    match command {
        RunCommand::Submit {
            pool,
            image,
            stage,
            launcher_image,
            timeout_seconds,
            metadata,
        } => {
            let request = SubmitRun {
                pool,
                runner_image: image,
                stage: Some(stage),
                launcher_image,
                run_timeout_seconds: timeout_seconds,
                metadata: metadata.into_iter().collect(),
            };
            let run = client::submit_run(backend_url, &request).await?;
            println!("{}", run.id);
        }
        RunCommand::Trigger { stack, proposed } => {
            let run = client::trigger_run(backend_url, &stack, &TriggerRun { proposed }).await?;
            println!("{}", run.id);
        }
        RunCommand::Confirm { id } => {
            let run = client::confirm_run(backend_url, &id).await?;
            println!("{} {} {}", run.id, run.stage, run.state);
        }
        RunCommand::Logs { id, stage, follow } => {
            logs(backend_url, &id, stage.as_deref(), follow).await?;
        }
        RunCommand::List { pool, output } => {
            let runs = client::list_runs(backend_url, pool.as_deref()).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                Output::Table => {
                    println!(
                        "{:<28} {:<12} {:<11} {:<28} {:<18} {:<16} CREATED",
                        "RUN ID", "STAGE", "STATE", "WORKER", "CAUSE", "STACK"
                    );
                    for run in runs {
                        println!(
                            "{:<28} {:<12} {:<11} {:<28} {:<18} {:<16} {}",
                            run.id,
                            run.stage,
                            run.state,
                            run.worker_id.unwrap_or_default(),
                            run.cause.unwrap_or_default(),
                            run.stack.unwrap_or_else(|| "-".into()),
                            run.created_at
                        );
                    }
                }
            }
        }
        RunCommand::Stop { id } => {
            let run = client::stop_run(backend_url, &id).await?;
            println!("{} {}", run.id, run.state);
        }
    }
    Ok(())
}

/// Prints the log, a header before each stage attempt's part; with `follow`, until the run
/// has ended and every line is printed.
async fn logs(
    backend_url: &str,
    run_id: &str,
    stage: Option<&str>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut after = 0;
    let mut current: Option<(String, u32, String)> = None;
    loop {
        let page = client::run_logs(backend_url, run_id, stage, after).await?;
        let fetched = page.lines.len();
        for line in &page.lines {
            print_line(&mut current, line);
        }
        after = page.next;
        if fetched > 0 {
            continue;
        }
        if !follow || page.ended {
            if follow {
                eprintln!("run {run_id} is {}", page.state);
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

fn print_line(current: &mut Option<(String, u32, String)>, line: &LogEntry) {
    let key = (line.stage.clone(), line.attempt, line.part.clone());
    if current.as_ref() != Some(&key) {
        println!("--- {} #{} {} ---", line.stage, line.attempt, line.part);
        *current = Some(key);
    }
    println!("{}", line.text);
}
