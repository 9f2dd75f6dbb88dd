//! How a stage ends, as the worker saw it: the exit code of the `worker` container (which the
//! operator reads), the termination message (its detail) and the result for `Finish`.
//!
//! Exit codes (docs/launcher.md): 0 success; a failing command's own code (1-255, 128+N when
//! signal N ended it; 126 not executable, 127 not found, as shells do); and four codes of the
//! launcher's own, above what tools commonly use:
//! [`STOPPED`], [`RUN_TIMED_OUT`], [`LOGS_TIMED_OUT`], [`LAUNCHER_FAILED`]. A command that
//! exits with one of those by itself is told apart by the termination message.

use std::time::Duration;

use crate::proto::FinishRequest;
use crate::proto::finish_request::Outcome;

/// The run was stopped: a stop request, or SIGTERM (the Pod is being deleted).
pub const STOPPED: u8 = 200;
/// `SPACELIFT_LAUNCHER_RUN_TIMEOUT` passed.
pub const RUN_TIMED_OUT: u8 = 201;
/// No output for `SPACELIFT_LAUNCHER_LOGS_TIMEOUT`.
pub const LOGS_TIMED_OUT: u8 = 202;
/// The launcher itself could not do its part (no job, no gRPC service, upload refused).
pub const LAUNCHER_FAILED: u8 = 203;

/// Why the commands were interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interruption {
    Stopped { reason: String },
    RunTimeout { after: Duration },
    LogsTimeout { after: Duration },
}

/// The end of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    /// A command ended with a non-zero code.
    Failed {
        command: String,
        argv: String,
        code: i32,
    },
    /// A command could not be started.
    NotStarted {
        command: String,
        argv: String,
        code: i32,
        why: String,
    },
    Interrupted {
        command: String,
        interruption: Interruption,
    },
    /// The launcher's own part failed (the workspace upload, the gRPC service).
    LauncherFailed {
        message: String,
    },
}

impl Ending {
    pub fn exit_code(&self) -> u8 {
        match self {
            Ending::Succeeded => 0,
            Ending::Failed { code, .. } | Ending::NotStarted { code, .. } => {
                u8::try_from(*code).ok().filter(|c| *c != 0).unwrap_or(1)
            }
            Ending::Interrupted { interruption, .. } => match interruption {
                Interruption::Stopped { .. } => STOPPED,
                Interruption::RunTimeout { .. } => RUN_TIMED_OUT,
                Interruption::LogsTimeout { .. } => LOGS_TIMED_OUT,
            },
            Ending::LauncherFailed { .. } => LAUNCHER_FAILED,
        }
    }

    /// The one-line detail: the termination message and the last system line.
    pub fn message(&self) -> String {
        match self {
            Ending::Succeeded => "every command succeeded".into(),
            Ending::Failed {
                command,
                argv,
                code,
            } => format!("command {command} ({argv}) exited with code {code}"),
            Ending::NotStarted {
                command, argv, why, ..
            } => format!("command {command} ({argv}) could not be started: {why}"),
            Ending::Interrupted {
                command,
                interruption,
            } => {
                let why = match interruption {
                    Interruption::Stopped { reason } => format!("the run was stopped: {reason}"),
                    Interruption::RunTimeout { after } => format!(
                        "the run timed out: it ran longer than SPACELIFT_LAUNCHER_RUN_TIMEOUT ({after:?})"
                    ),
                    Interruption::LogsTimeout { after } => format!(
                        "the run timed out: no output for SPACELIFT_LAUNCHER_LOGS_TIMEOUT ({after:?})"
                    ),
                };
                format!("{why} (during command {command})")
            }
            Ending::LauncherFailed { message } => message.clone(),
        }
    }

    /// What `Finish` tells `launcher-grpc`.
    pub fn finish_request(&self) -> FinishRequest {
        let (outcome, failed_command, exit_code) = match self {
            Ending::Succeeded => (Outcome::Succeeded, String::new(), Some(0)),
            Ending::Failed { command, code, .. } | Ending::NotStarted { command, code, .. } => {
                (Outcome::Failed, command.clone(), Some(*code))
            }
            Ending::Interrupted {
                command,
                interruption: Interruption::Stopped { .. },
            } => (Outcome::Stopped, command.clone(), None),
            Ending::Interrupted { command, .. } => (Outcome::Failed, command.clone(), None),
            Ending::LauncherFailed { .. } => (Outcome::Failed, String::new(), None),
        };
        FinishRequest {
            outcome: outcome as i32,
            failed_command,
            exit_code,
            message: self.message(),
        }
    }
}

/// argv for messages: joined by spaces, cut so a message stays one readable line.
pub fn display_argv(argv: &[String]) -> String {
    let joined = argv.join(" ");
    if joined.chars().count() <= 200 {
        return joined;
    }
    let cut: String = joined.chars().take(200).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_has_its_code_and_a_message_that_names_the_command() {
        let failed = Ending::Failed {
            command: "plan".into(),
            argv: "tofu plan -input=false".into(),
            code: 1,
        };
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(
            failed.message(),
            "command plan (tofu plan -input=false) exited with code 1"
        );
        assert_eq!(failed.finish_request().outcome(), Outcome::Failed);
        assert_eq!(failed.finish_request().exit_code, Some(1));
        let stopped = Ending::Interrupted {
            command: "apply".into(),
            interruption: Interruption::Stopped {
                reason: "user asked".into(),
            },
        };
        assert_eq!(stopped.exit_code(), STOPPED);
        assert_eq!(stopped.finish_request().outcome(), Outcome::Stopped);
        assert_eq!(
            stopped.message(),
            "the run was stopped: user asked (during command apply)"
        );
        let timed_out = Ending::Interrupted {
            command: "plan".into(),
            interruption: Interruption::LogsTimeout {
                after: Duration::from_secs(600),
            },
        };
        assert_eq!(timed_out.exit_code(), LOGS_TIMED_OUT);
        assert!(
            timed_out
                .message()
                .contains("SPACELIFT_LAUNCHER_LOGS_TIMEOUT (600s)")
        );
        assert_eq!(Ending::Succeeded.exit_code(), 0);
        let odd = Ending::Failed {
            command: "x".into(),
            argv: "x".into(),
            code: 256,
        };
        assert_eq!(odd.exit_code(), 1, "out-of-range codes still fail");
    }

    #[test]
    fn long_argv_is_cut_for_messages() {
        let argv = vec!["tofu".to_string(), "x".repeat(500)];
        let shown = display_argv(&argv);
        assert_eq!(shown.chars().count(), 203);
        assert!(shown.ends_with("..."));
    }
}
