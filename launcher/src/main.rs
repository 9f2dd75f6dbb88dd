//! `spacelift-launcher`: one binary, three roles. Called as `spacelift-worker` (the copy
//! `init` puts into the binaries directory) it is the worker; otherwise the first argument
//! names the role: `init`, `grpc-server` or `worker`.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: spacelift-launcher init | grpc-server | worker
  init         lay out the run's workspace and install its tool (the run Pod's init container)
  grpc-server  serve the worker on 127.0.0.1:7946 and the state proxy on 127.0.0.1:7947
  worker       run the stage's commands (also: invoked as spacelift-worker)
See docs/launcher.md.";

#[derive(Clone, Copy)]
enum Role {
    Init,
    GrpcServer,
    Worker,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let called_as = Path::new(&argv0).file_name().unwrap_or_default();
    let role = if called_as == launcher_api::layout::WORKER_BINARY_NAME {
        Role::Worker
    } else {
        match args.next().as_deref().and_then(|a| a.to_str()) {
            Some("init") => Role::Init,
            Some("grpc-server") => Role::GrpcServer,
            Some("worker") => Role::Worker,
            Some("--version" | "version") => {
                println!("spacelift-launcher {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some("--help" | "-h" | "help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    };
    // Two threads: the roles wait on the network and on a child, they do not compute.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("spacelift-launcher: cannot start: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match role {
            Role::Init => launcher::init::main().await,
            Role::GrpcServer => launcher::server::main().await,
            Role::Worker => launcher::worker::main().await,
        }
    });
    // Tasks still waiting on the network (a log flush that timed out) must not hold the exit.
    runtime.shutdown_background();
    ExitCode::from(code)
}
