//! `stack ...` and `tool ...`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use workerpool_operator::backend::archive::pack_directory;
use workerpool_operator::backend::client;
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::backend::store::{CreateStack, UpdateStack};

use crate::key_value;

#[derive(Subcommand)]
pub enum StackCommand {
    /// Create a stack: upload its source and record its pool, tool and environment.
    Create {
        /// Stack name.
        #[arg(long)]
        name: String,
        /// The pool whose workers run it (name or ULID).
        #[arg(long)]
        pool: String,
        /// The source: a directory (packed, without .git and .terraform) or a .tar.gz.
        #[arg(long)]
        source: PathBuf,
        /// The IaC tool (stored with `tool add`).
        #[arg(long, default_value = "tofu")]
        tool: String,
        /// The tool's version.
        #[arg(long)]
        tool_version: String,
        /// A plain variable for the stage's commands, KEY=VALUE; repeatable.
        #[arg(long = "env", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// The runner image (default: the pool's defaultRunnerImage).
        #[arg(long)]
        runner_image: Option<String>,
        /// Whether the backend keeps the stack's state (OpenTofu's http backend).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        managed_state: bool,
    },
    /// Change a stack; what is not given stays. Runs already triggered keep their source.
    Update {
        #[arg(long)]
        name: String,
        #[arg(long)]
        source: Option<PathBuf>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        tool_version: Option<String>,
        /// Replaces the whole environment, KEY=VALUE; repeatable.
        #[arg(long = "env", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Removes every variable.
        #[arg(long, conflicts_with = "env")]
        clear_env: bool,
        /// The runner image ("" clears it).
        #[arg(long)]
        runner_image: Option<String>,
        #[arg(long, action = clap::ArgAction::Set)]
        managed_state: Option<bool>,
    },
    /// List stacks.
    List,
    /// Show a stack as JSON.
    Show { name: String },
    /// Print the stack's current state (OpenTofu's JSON).
    State {
        name: String,
        /// An older version instead.
        #[arg(long, conflicts_with = "versions")]
        version: Option<i64>,
        /// List the versions instead.
        #[arg(long)]
        versions: bool,
    },
}

#[derive(Subcommand)]
pub enum ToolCommand {
    /// Store a tool binary in the state directory; jobs name it, launchers download it.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The binary (e.g. the `tofu` executable).
        #[arg(long)]
        file: PathBuf,
    },
    /// List stored tools.
    List,
}

/// Reads a source: a directory is packed, a file is taken as the tar.gz it must be.
fn read_source(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.is_dir() {
        pack_directory(path).with_context(|| format!("packing the source {}", path.display()))
    } else {
        std::fs::read(path).with_context(|| format!("reading the source {}", path.display()))
    }
}

async fn upload(backend_url: &str, path: &Path) -> anyhow::Result<String> {
    let artifact = client::upload_source(backend_url, read_source(path)?).await?;
    eprintln!(
        "uploaded the source {} ({} bytes, sha256 {})",
        path.display(),
        artifact.size,
        artifact.sha256
    );
    Ok(artifact.sha256)
}

pub async fn stack(backend_url: &str, command: StackCommand) -> anyhow::Result<()> {
    match command {
        StackCommand::Create {
            name,
            pool,
            source,
            tool,
            tool_version,
            env,
            runner_image,
            managed_state,
        } => {
            let source = upload(backend_url, &source).await?;
            let request = CreateStack {
                name,
                pool,
                source,
                tool,
                tool_version,
                environment: env.into_iter().collect(),
                runner_image,
                managed_state: Some(managed_state),
            };
            let stack = client::create_stack(backend_url, &request).await?;
            println!("{}", stack.name);
        }
        StackCommand::Update {
            name,
            source,
            tool,
            tool_version,
            env,
            clear_env,
            runner_image,
            managed_state,
        } => {
            let source = match source {
                Some(path) => Some(upload(backend_url, &path).await?),
                None => None,
            };
            let environment = match (clear_env, env.is_empty()) {
                (true, _) => Some(BTreeMap::new()),
                (false, false) => Some(env.into_iter().collect()),
                (false, true) => None,
            };
            let request = UpdateStack {
                source,
                tool,
                tool_version,
                environment,
                runner_image,
                managed_state,
            };
            let stack = client::update_stack(backend_url, &name, &request).await?;
            println!("{}", stack.name);
        }
        StackCommand::List => {
            println!(
                "{:<24} {:<28} {:<18} {:<14} {:<8} STATE",
                "NAME", "POOL", "TOOL", "SOURCE", "MANAGED"
            );
            for stack in client::list_stacks(backend_url).await? {
                println!(
                    "{:<24} {:<28} {:<18} {:<14} {:<8} {}",
                    stack.name,
                    stack.pool_id,
                    format!("{} {}", stack.tool, stack.tool_version),
                    stack.source.sha256.get(..12).unwrap_or_default(),
                    stack.managed_state,
                    match (stack.state_version, &stack.lock) {
                        (_, Some(_)) => "locked".to_string(),
                        (Some(v), None) => format!("v{v}"),
                        (None, None) => "-".to_string(),
                    }
                );
            }
        }
        StackCommand::Show { name } => {
            let stack = client::get_stack(backend_url, &name).await?;
            println!("{}", serde_json::to_string_pretty(&stack)?);
        }
        StackCommand::State {
            name,
            version,
            versions,
        } => {
            if versions {
                println!(
                    "{:<8} {:<8} {:<28} {:<10} CREATED",
                    "VERSION", "SERIAL", "RUN", "STAGE"
                );
                for v in client::state_versions(backend_url, &name).await? {
                    println!(
                        "{:<8} {:<8} {:<28} {:<10} {}",
                        v.version,
                        v.serial.map(|s| s.to_string()).unwrap_or_default(),
                        v.run_id.unwrap_or_default(),
                        v.stage.unwrap_or_default(),
                        v.created_at
                    );
                }
            } else {
                let state = client::stack_state(backend_url, &name, version).await?;
                println!("{}", state.trim_end());
            }
        }
    }
    Ok(())
}

pub fn tool(state: &StateDir, command: ToolCommand) -> anyhow::Result<()> {
    let store = state.open_store()?;
    match command {
        ToolCommand::Add {
            name,
            version,
            file,
        } => {
            workerpool_operator::backend::store::check_tool(&name, &version)?;
            let blob = state
                .blobs()
                .put_file(&file)
                .with_context(|| format!("storing the tool {}", file.display()))?;
            let tool = store.add_tool(&name, &version, &blob)?;
            println!(
                "{} {} sha256 {} ({} bytes)",
                tool.name, tool.version, tool.sha256, tool.size
            );
        }
        ToolCommand::List => {
            println!("{:<12} {:<12} {:<66} SIZE", "NAME", "VERSION", "SHA256");
            for tool in store.tools()? {
                println!(
                    "{:<12} {:<12} {:<66} {}",
                    tool.name, tool.version, tool.sha256, tool.size
                );
            }
        }
    }
    Ok(())
}
