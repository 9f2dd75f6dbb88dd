//! `workerpool-operator`: the operator binary. Parses flags and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use workerpool_operator::{crd, manifest, render};

#[derive(Parser)]
#[command(
    name = "workerpool-operator",
    version,
    about = "Runs Spacelift-style worker pools on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (or write them into a directory).
    Crds {
        /// Write crds/workerpools.yaml and crds/workers.yaml into this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the Pod a run would get, without a cluster.
    Render {
        /// A YAML file with one WorkerPool (other documents are ignored).
        #[arg(long)]
        pool: PathBuf,
        /// A run-schedule document (JSON or YAML): runId, stage, attempt, launcherImage,
        /// runnerImage, ...
        #[arg(long)]
        run: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
        /// The pool ULID to render with (default: the pool's workers.spacelift.io/ulid label,
        /// else a placeholder).
        #[arg(long)]
        pool_ulid: Option<String>,
        /// The worker ULID to render with.
        #[arg(long, default_value = "01HPS6K4BNB7BPHCDHDWFAMJNV")]
        worker_ulid: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds { out_dir } => print_crds(out_dir),
        Command::Render {
            pool,
            run,
            output,
            pool_ulid,
            worker_ulid,
        } => {
            let pool_file = pool.display().to_string();
            let run_file = run.display().to_string();
            let pool = manifest::load_workerpool(&pool)?;
            let run = render::load_run(&run)?;
            let ids = render::RenderIds {
                pool_ulid,
                worker_ulid,
            };
            let pod = render::render_pod(&pool, &run, &ids)
                .with_context(|| format!("{run_file} on {pool_file}"))?;
            print!("{}", format(&pod, output)?);
            Ok(())
        }
    }
}

fn print_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let manifests = crd::crd_manifests()?;
    match out_dir {
        Some(dir) => {
            for (file, yaml) in manifests {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        None => {
            let documents: Vec<String> = manifests.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", documents.join("---\n"));
        }
    }
    Ok(())
}

fn format<T: serde::Serialize>(value: &T, output: Format) -> anyhow::Result<String> {
    Ok(match output {
        Format::Yaml => yaml_serde::to_string(value)?,
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
    })
}
