//! `workerpool-backend`: the reference backend (see `workerpool_operator::backend`).

mod runs;
mod stacks;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use workerpool_operator::backend::broker_config::{BrokerConfigRequest, write_broker_config};
use workerpool_operator::backend::install_crypto_provider;
use workerpool_operator::backend::pool::{PoolRequest, create_pool, write_pool_files};
use workerpool_operator::backend::serve::{DEFAULT_LAUNCHER_IMAGE, ServeOptions, Server};
use workerpool_operator::backend::state::{DEFAULT_STATE_DIR, StateDir};

/// The reference backend of workerpool-operator: issues pool credentials, configures the
/// broker, queues and dispatches runs over MQTT, and records their outcomes.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Where the CA, configuration and run queue live.
    #[arg(long, global = true, env = "WORKERPOOL_BACKEND_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pools and their credentials.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// Write a Mosquitto configuration (mutual TLS, per-pool ACL) for this backend's CA.
    BrokerConfig {
        /// Output directory (default: <state-dir>/broker).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Host name or IP clients use to reach the broker; repeatable. The first goes into
        /// tokens. Default: localhost and 127.0.0.1.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// TLS listener port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Address the listener binds.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// First level of every topic.
        #[arg(long, default_value = "spacelift")]
        topic_namespace: String,
        /// Adds `user <name>`: the account Mosquitto switches to when started as root.
        #[arg(long)]
        mosquitto_user: Option<String>,
    },
    /// Run the backend: MQTT link, dispatcher and HTTP API.
    Serve {
        /// HTTP listen address.
        #[arg(
            long,
            env = "WORKERPOOL_BACKEND_LISTEN",
            default_value = "127.0.0.1:8080"
        )]
        listen: SocketAddr,
        /// Broker URL (default: the one broker-config recorded).
        #[arg(long, env = "WORKERPOOL_BACKEND_BROKER_URL")]
        broker_url: Option<String>,
        /// Allow a plain mqtt:// broker (no TLS; local experiments only).
        #[arg(long)]
        allow_insecure_mqtt: bool,
        /// Largest pool message accepted, in bytes; larger ones are dropped, logged and counted.
        #[arg(long, default_value_t = workerpool_operator::protocol::DEFAULT_MAX_PAYLOAD)]
        mqtt_max_payload_bytes: usize,
        /// Launcher image for runs that do not name one.
        #[arg(long, default_value = DEFAULT_LAUNCHER_IMAGE)]
        launcher_image: String,
        /// Where the launcher API listens (HTTPS, for the run Pods); off when not given.
        #[arg(long, env = "WORKERPOOL_BACKEND_LAUNCHER_LISTEN")]
        launcher_listen: Option<SocketAddr>,
        /// The launcher API's URL that schedules carry (https://host[:port]), as run Pods
        /// reach it. Default: https://<launcher-listen>.
        #[arg(
            long,
            env = "WORKERPOOL_BACKEND_LAUNCHER_URL",
            requires = "launcher_listen"
        )]
        launcher_url: Option<String>,
    },
    /// Runs, through the HTTP API of a running `serve`.
    Run {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: runs::RunCommand,
    },
    /// Stacks, through the HTTP API of a running `serve`.
    Stack {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        command: stacks::StackCommand,
    },
    /// Tool binaries, in the state directory.
    Tool {
        #[command(subcommand)]
        command: stacks::ToolCommand,
    },
}

/// Where the commands that go through the HTTP API find it.
#[derive(clap::Args)]
struct Api {
    /// The API of `serve`.
    #[arg(
        long,
        global = true,
        env = "WORKERPOOL_BACKEND_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    backend_url: String,
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Create a pool: issue its certificate and print its token and privateKey.
    Create {
        /// Pool name (also the name of the Secret).
        #[arg(long)]
        name: String,
        /// PEM certificate signing request of your own RSA key; without it a new RSA key is
        /// generated.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Where to write <name>.config (token), <name>.pem (key) and <name>-secret.yaml.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Size of a generated RSA key.
        #[arg(long, default_value_t = 4096)]
        key_bits: usize,
        /// Broker URL for the token (default: the one broker-config recorded).
        #[arg(long)]
        broker_url: Option<String>,
    },
    /// List pools.
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    install_crypto_provider();
    let cli = Cli::parse();
    let state = StateDir::new(&cli.state_dir);
    match cli.command {
        Command::Pool { command } => pool(&state, command),
        Command::BrokerConfig {
            out_dir,
            hosts,
            port,
            bind,
            topic_namespace,
            mosquitto_user,
        } => {
            let request = BrokerConfigRequest {
                out_dir: out_dir.unwrap_or_else(|| state.root().join("broker")),
                hosts,
                port,
                bind,
                topic_namespace,
                run_as_user: mosquitto_user,
            };
            let files = write_broker_config(&state, &request)?;
            println!("{}", files.config.display());
            eprintln!(
                "wrote {}; tokens will name {}. Start the broker with: mosquitto -c {}",
                files.config.display(),
                files.broker_url,
                files.config.display()
            );
            Ok(())
        }
        Command::Serve {
            listen,
            broker_url,
            allow_insecure_mqtt,
            mqtt_max_payload_bytes,
            launcher_image,
            launcher_listen,
            launcher_url,
        } => {
            let mut options = ServeOptions {
                listen,
                broker_url,
                allow_insecure: allow_insecure_mqtt,
                launcher_image,
                launcher_listen,
                launcher_url,
                ..ServeOptions::default()
            };
            options.link.max_payload = mqtt_max_payload_bytes;
            let server = Server::start(&state, options).await?;
            eprintln!("serving the API on http://{}", server.addr);
            if let (Some(addr), Some(url)) = (server.launcher_addr, &server.launcher_url) {
                eprintln!("serving the launcher API on https://{addr} (schedules name {url})");
            }
            shutdown_signal().await;
            server.shutdown().await;
            Ok(())
        }
        Command::Run { api, command } => runs::run(&api.backend_url, command).await,
        Command::Stack { api, command } => stacks::stack(&api.backend_url, command).await,
        Command::Tool { command } => stacks::tool(&state, command),
    }
}

fn pool(state: &StateDir, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::Create {
            name,
            csr,
            out_dir,
            key_bits,
            broker_url,
        } => {
            let csr_pem = match &csr {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the CSR {}", path.display()))?,
                ),
                None => None,
            };
            let created = create_pool(
                state,
                &PoolRequest {
                    name: &name,
                    csr_pem: csr_pem.as_deref(),
                    key_bits,
                    broker_url: broker_url.as_deref(),
                },
            )?;
            let files = write_pool_files(&out_dir, &created)?;
            println!("token: {}", created.token);
            match (created.private_key_value(), files.secret) {
                (Some(value), Some(secret)) => {
                    println!("privateKey: {value}");
                    eprintln!(
                        "pool {name} ({}) created; wrote {}, the key next to it, and {} (kubectl apply -f {})",
                        created.id,
                        files.token.display(),
                        secret.display(),
                        secret.display()
                    );
                }
                _ => eprintln!(
                    "pool {name} ({}) created for your CSR; wrote {}. The privateKey value is \
                     your own key: base64 -w 0 your-private-key.pem",
                    created.id,
                    files.token.display()
                ),
            }
            Ok(())
        }
        PoolCommand::List => {
            let store = state.open_store()?;
            println!("{:<28} NAME", "ID");
            for pool in store.pools()? {
                println!("{:<28} {}", pool.id, pool.name);
            }
            Ok(())
        }
    }
}

pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
