//! `workerpool-operator`: the operator binary. Parses flags and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use workerpool_operator::controller::ControllerConfig;
use workerpool_operator::guard::RunPodGuard;
use workerpool_operator::operator::{self, OperatorOptions};
use workerpool_operator::ops::http::{MetricsServing, parse_bind_address};
use workerpool_operator::ops::leader::LeaseConfig;
use workerpool_operator::ops::telemetry::{self, LogFormat};
use workerpool_operator::{crd, hooks, manifest, render};

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
    /// Run the operator (the controller manager).
    Run(Box<RunArgs>),
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
        #[arg(long, default_value = render::PLACEHOLDER_WORKER_ULID)]
        worker_ulid: String,
        /// Run this WASM plugin over the Pod (repeatable, in order), with optional settings as
        /// JSON or YAML: `--plugin mirror.wasm='{"mirrors":{"docker.io":"m.example.com"}}'`.
        /// The decision trail goes to stderr.
        #[arg(long = "plugin", value_name = "FILE[=SETTINGS]")]
        plugins: Vec<workerpool_operator::hooks::offline::PluginArg>,
        /// Evaluate this Rego file as the pool's own initialization policy (the file the seed
        /// mounts from a ConfigMap), after the plugins.
        #[arg(long, value_name = "FILE")]
        pool_policy: Option<PathBuf>,
        /// Evaluate this Rego initialization policy as a cluster-wide one (repeatable), after
        /// the pool's.
        #[arg(long = "policy", value_name = "FILE")]
        policies: Vec<PathBuf>,
        /// The run-Pod guard to enforce, as the operator's --run-pod-guard file (default:
        /// level baseline, any registry, any ServiceAccount, no nodeName).
        #[arg(long, value_name = "FILE")]
        guard: Option<PathBuf>,
        /// The guard's Pod Security Standards level (privileged, baseline, restricted), for
        /// every namespace the guard file does not give a level of its own.
        #[arg(long, value_name = "LEVEL")]
        guard_level: Option<workerpool_operator::guard::Level>,
    },
    /// Work with hook plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Evaluate Rego policies for the operator, over stdin and stdout (the operator starts
    /// these children itself; see src/hooks/rego/).
    #[command(name = "policy-evaluator", hide = true)]
    PolicyEvaluator,
}

/// Counts live bytes, and ends a `policy-evaluator` child before an allocation past its
/// budget (never armed in the operator itself).
#[global_allocator]
static ALLOCATOR: budget_alloc::BudgetAlloc = budget_alloc::BudgetAlloc;

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile a plugin, check its imports and ABI exports, run validate_settings, and print
    /// its exports and size.
    Check {
        /// The module (.wasm, optionally gzip-compressed).
        file: PathBuf,
        /// Settings to validate, as JSON or YAML.
        #[arg(long)]
        settings: Option<String>,
    },
}

/// Flags of `run`, spelled as the Go controller's (`--flag=value` works too).
#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, e.g. ":8443"; "0" disables it.
    #[arg(long, default_value = "0")]
    metrics_bind_address: String,
    /// Serve /metrics over HTTPS with TokenReview/SubjectAccessReview (true), or plain HTTP.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_secure: bool,
    /// Where a mounted metrics certificate (tls.crt, tls.key) is looked for.
    #[arg(long, default_value = "/tmp/k8s-metrics-server/serving-certs")]
    metrics_cert_dir: PathBuf,
    /// Offer HTTP/2 on the HTTPS metrics server (controller-runtime's flag; off because of the
    /// HTTP/2 stream-reset attacks).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_http2: bool,
    /// The namespace the operator runs in (the Spacelift chart's flag): the default namespace
    /// of the leader Lease and of the cluster-wide hook ConfigMaps. Default: POD_NAMESPACE.
    #[arg(long, env = "POD_NAMESPACE")]
    controller_namespace: Option<String>,
    /// Address of /healthz and /readyz; "0" disables them.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Elect a leader on a Lease: only the leader acts.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else the ServiceAccount's).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "workerpool-operator-leader")]
    leader_election_id: String,
    /// Watch only these namespaces (repeat the flag or separate with commas); all if absent.
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// The cluster-wide plugins and Rego policies (YAML, see docs/plugins.md).
    #[arg(long)]
    hook_config: Option<PathBuf>,
    /// What run Pods may be, enforced after every hook (YAML, see docs/security.md). Without
    /// it: level baseline, any registry, any ServiceAccount, no nodeName.
    #[arg(long, value_name = "FILE")]
    run_pod_guard: Option<PathBuf>,
    /// The guard's Pod Security Standards level (privileged, baseline, restricted), for every
    /// namespace the guard file does not give a level of its own.
    #[arg(long, value_name = "LEVEL")]
    run_pod_guard_level: Option<workerpool_operator::guard::Level>,
    /// Where compiled plugins are kept across restarts ("" keeps them in memory only).
    #[arg(long, default_value = "/tmp/workerpool-operator/wasm-cache")]
    plugin_cache_dir: PathBuf,
    /// Size the compiled plugins in --plugin-cache-dir are kept to, in MiB (a soft limit: the
    /// oldest go after each write). The default fits the Helm chart's 256Mi cache volume.
    #[arg(long, default_value_t = 192, value_parser = clap::value_parser!(u64).range(1..))]
    plugin_cache_max_mib: u64,
    /// How often the hook configuration and its ConfigMaps are re-read (Go duration).
    #[arg(long, default_value = "30s", value_parser = duration)]
    hook_reload_interval: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter, e.g. "info" or "workerpool_operator=debug" (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Allow plain mqtt:// brokers (no TLS): local experiments only.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_insecure_mqtt: bool,
    /// How often the first connection to a pool's broker is retried before the pool reports
    /// it unreachable (it keeps retrying after that).
    #[arg(long, default_value_t = 10)]
    mqtt_reconnect_retry_count: u32,
    /// Largest backend message accepted, in bytes; larger ones are dropped, logged and counted.
    #[arg(long, default_value_t = workerpool_operator::protocol::DEFAULT_MAX_PAYLOAD)]
    mqtt_max_payload_bytes: usize,
    /// How long a run Pod may wait on an image pull before its run fails.
    #[arg(long, default_value = "5m", value_parser = duration)]
    image_pull_timeout: Duration,
    /// How long a run Pod may stay unschedulable before its run fails.
    #[arg(long, default_value = "10m", value_parser = duration)]
    unschedulable_timeout: Duration,
    /// How long a deleted Worker waits for the backend to confirm its deregistration.
    #[arg(long, default_value = "30s", value_parser = duration)]
    deregistration_timeout: Duration,
    /// How often every worker's state is re-sent to the backend.
    #[arg(long, default_value = "60s", value_parser = duration)]
    heartbeat_interval: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|e| format!("{e} (use a Go duration such as 30s, 5m, 1h)"))?;
    if parsed.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(parsed.into())
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PolicyEvaluator = cli.command {
        return hooks::rego::child::serve();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_operator(*args),
        Command::Crds { out_dir } => print_crds(out_dir),
        Command::Render {
            pool,
            run,
            output,
            pool_ulid,
            worker_ulid,
            plugins,
            pool_policy,
            policies,
            guard,
            guard_level,
        } => {
            let pool_file = pool.display().to_string();
            let run_file = run.display().to_string();
            let pool = manifest::load_workerpool(&pool)?;
            let run = render::load_run(&run)?;
            let ids = render::RenderIds {
                pool_ulid,
                worker_ulid,
            };
            let guard = Arc::new(run_pod_guard(guard.as_deref(), guard_level)?);
            let hooked = !(plugins.is_empty() && pool_policy.is_none() && policies.is_empty());
            let worker = render::stand_in_worker(&pool, &ids);
            let input = hooks::HookInput::build(&pool, &worker, &run)
                .with_context(|| format!("{run_file} on {pool_file}: cannot build the run Pod"))?;
            if let Ok(Some(policy)) = hooks::source::initialization_policy(&pool)
                && pool_policy.is_none()
            {
                eprintln!(
                    "note: the pool's initialization policy (ConfigMap {} key {}) is not read offline; pass its file with --pool-policy",
                    policy.config_map, policy.key
                );
            }
            if !pool.spec.plugins.is_empty() {
                eprintln!(
                    "note: the pool's spec.plugins live in ConfigMaps and are not run offline; pass them with --plugin"
                );
            }
            let pipeline = if hooked {
                hooks::offline::pipeline(&plugins, pool_policy.as_deref(), &policies)?
            } else {
                // No hooks: no WASM engine to start, but the invariants and the guard still run.
                hooks::Pipeline {
                    scope: "render".into(),
                    ..hooks::Pipeline::default()
                }
            };
            let pipeline = hooks::Pipeline { guard, ..pipeline };
            let decision = pipeline.evaluate(input);
            if hooked || matches!(decision, hooks::Decision::Denied(_)) {
                eprint!("{}", hooks::offline::describe(&decision));
            }
            match decision {
                hooks::Decision::Allowed(allowed) => {
                    print!("{}", format(&allowed.pod, output)?);
                    Ok(())
                }
                hooks::Decision::Denied(denial) => {
                    Err(anyhow::anyhow!("{run_file} on {pool_file}: {denial}"))
                }
            }
        }
        Command::PolicyEvaluator => Ok(()),
        Command::Plugin(PluginCommand::Check { file, settings }) => {
            let settings = settings
                .map(|text| yaml_serde::from_str::<serde_json::Value>(&text))
                .transpose()
                .context("--settings is neither JSON nor YAML")?;
            print!("{}", hooks::offline::check(&file, settings)?);
            Ok(())
        }
    }
}

fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level)?;
    let probe_address = parse_bind_address(&args.health_probe_bind_address)
        .context("--health-probe-bind-address")?;
    let metrics_address =
        parse_bind_address(&args.metrics_bind_address).context("--metrics-bind-address")?;
    let leader_election = if args.leader_elect {
        let namespace = LeaseConfig::namespace_from(
            args.leader_election_namespace
                .as_deref()
                .or(args.controller_namespace.as_deref()),
        )
            .context("--leader-elect needs the namespace of its Lease: set POD_NAMESPACE or --leader-election-namespace")?;
        let mut lease = LeaseConfig::new(namespace);
        lease.name = args.leader_election_id.clone();
        Some(lease)
    } else {
        None
    };
    let mut controller = ControllerConfig::default();
    controller.waits.image_pull = args.image_pull_timeout;
    controller.waits.unschedulable = args.unschedulable_timeout;
    controller.deregistration_timeout = args.deregistration_timeout;
    controller.heartbeat = args.heartbeat_interval;
    controller.link.allow_insecure = args.allow_insecure_mqtt;
    controller.link.first_connect_retries = Some(args.mqtt_reconnect_retry_count);
    controller.link.max_payload = args.mqtt_max_payload_bytes;
    let options = OperatorOptions {
        namespaces: args
            .namespaces
            .into_iter()
            .filter(|n| !n.trim().is_empty())
            .collect(),
        probe_address,
        metrics_address,
        metrics: MetricsServing {
            secure: args.metrics_secure,
            cert_dir: args.metrics_cert_dir,
            http2: args.enable_http2,
        },
        leader_election,
        hook_config: args.hook_config,
        run_pod_guard: run_pod_guard(args.run_pod_guard.as_deref(), args.run_pod_guard_level)?,
        plugin_cache: Some(args.plugin_cache_dir)
            .filter(|d| !d.as_os_str().is_empty())
            .map(|dir| hooks::host::CompileCache::new(dir, args.plugin_cache_max_mib)),
        hook_namespace: args.controller_namespace.filter(|ns| !ns.trim().is_empty()),
        hook_reload: args.hook_reload_interval,
        controller,
    };
    // Kubernetes objects are large and the reconcilers' futures hold several of them: the
    // default 2 MiB worker stacks overflow in unoptimised builds.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()?;
    runtime.block_on(operator::run(options))?;
    Ok(())
}

/// The guard from its file (or the default), with the level flag applied.
fn run_pod_guard(
    file: Option<&std::path::Path>,
    level: Option<workerpool_operator::guard::Level>,
) -> anyhow::Result<RunPodGuard> {
    let guard = match file {
        Some(path) => RunPodGuard::load(path)?,
        None => RunPodGuard::default(),
    };
    Ok(match level {
        Some(level) => guard.with_level(level),
        None => guard,
    })
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
