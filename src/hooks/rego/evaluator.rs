//! The operator's side of policy evaluation: a few `policy-evaluator` children, each used by
//! one evaluation at a time, and the [`Policy`] handle the pipeline calls.
//!
//! Every exchange is bounded: in memory by the child's budget, in time by a deadline after
//! which the child is killed (a child stuck in one long builtin never answers its own time
//! limit). A child that died or was killed is replaced by a new one at the next evaluation;
//! nothing else notices.

use std::io::{self, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wire::{
    EXIT_MEMORY, MAX_RESPONSE_FRAME, PolicyRef, Request, Response, read_frame, write_frame,
};
use super::{CHILD_COMMAND, PolicyError, PolicyEvalError, RegoVersion};
use crate::hooks::host::Digest;

/// How long a new child may take to start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of every policy evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Wall-clock limit of one evaluation (regorus's own timer).
    pub timeout: Duration,
    /// Memory one evaluation (or one compile) may allocate.
    pub memory_limit_bytes: u64,
    /// Wall-clock limit of one compile.
    pub compile_timeout: Duration,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory_limit_bytes: 32 << 20,
            compile_timeout: Duration::from_secs(10),
        }
    }
}

/// The pool of evaluator children. One per process; share behind an `Arc`.
pub struct PolicyEvaluator {
    program: PathBuf,
    limits: PolicyLimits,
    idle: Mutex<Vec<Evaluator>>,
    /// Idle children kept for the next evaluations; more are started when all are busy.
    max_idle: usize,
}

impl std::fmt::Debug for PolicyEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEvaluator")
            .field("program", &self.program)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One child.
struct Evaluator {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<io::Result<Vec<u8>>>,
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A compiled initialization policy: its text and what compiling it found. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    name: String,
    reference: PolicyRef,
    text: Arc<str>,
    has_deny: bool,
    evaluator: Arc<PolicyEvaluator>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("version", &self.reference.version)
            .finish_non_exhaustive()
    }
}

impl Policy {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The syntax the policy was parsed with.
    pub fn version(&self) -> RegoVersion {
        self.reference.version
    }

    /// Evaluates `deny` for `input` (the JSON document policies see) and returns its messages
    /// (empty: allowed), capped in count and length. A policy without a `deny` rule allows
    /// without being evaluated; with one, every failure denies.
    pub fn evaluate(&self, input: &str) -> Result<Vec<String>, PolicyEvalError> {
        if !self.has_deny {
            return Ok(Vec::new());
        }
        self.evaluator.evaluate(self, input)
    }
}

impl PolicyEvaluator {
    /// Evaluators that run `program policy-evaluator` (the operator's binary).
    pub fn new(program: impl Into<PathBuf>, limits: PolicyLimits) -> Arc<Self> {
        Arc::new(Self {
            program: program.into(),
            limits,
            idle: Mutex::new(Vec::new()),
            max_idle: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
        })
    }

    /// Evaluators that run this very program, which must be `workerpool-operator`.
    pub fn of_this_program(limits: PolicyLimits) -> Result<Arc<Self>, PolicyEvalError> {
        let program = std::env::current_exe().map_err(|e| {
            PolicyEvalError::Unavailable(format!("cannot find the operator's own binary: {e}"))
        })?;
        Ok(Self::new(program, limits))
    }

    pub fn limits(&self) -> &PolicyLimits {
        &self.limits
    }

    /// Compiles `text` in a child (under the memory and compile time limits) and returns the
    /// policy. `file` is the name used in syntax error positions.
    pub fn compile(
        self: &Arc<Self>,
        name: &str,
        file: &str,
        text: &str,
        version: RegoVersion,
    ) -> Result<Policy, PolicyError> {
        let mut digested = text.as_bytes().to_vec();
        digested.extend_from_slice(format!("\0{version:?}\0{file}\0{name}").as_bytes());
        let reference = PolicyRef {
            digest: Digest::of(&digested).to_string(),
            name: name.to_string(),
            file: file.to_string(),
            version,
        };
        let request = Request::Compile {
            policy: reference.clone(),
            text: text.to_string(),
            memory_limit_bytes: self.limits.memory_limit_bytes,
        };
        let answer = self
            .exchange(&request, None, self.limits.compile_timeout)
            .map_err(PolicyError::Evaluator)?;
        match answer {
            Response::Compiled { version, has_deny } => Ok(Policy {
                name: name.to_string(),
                reference: PolicyRef {
                    version,
                    ..reference
                },
                text: text.into(),
                has_deny,
                evaluator: self.clone(),
            }),
            Response::NotCompiled(error) => Err(error),
            other => Err(PolicyError::Evaluator(unexpected(&other))),
        }
    }

    fn evaluate(&self, policy: &Policy, input: &str) -> Result<Vec<String>, PolicyEvalError> {
        let request = |text: Option<String>| Request::Evaluate {
            policy: policy.reference.clone(),
            text,
            timeout_millis: u64::try_from(self.limits.timeout.as_millis()).unwrap_or(u64::MAX),
            memory_limit_bytes: self.limits.memory_limit_bytes,
        };
        // A child that has not compiled the policy (or forgot it) asks for its text once.
        let deadline = self.deadline();
        let mut answer = self.exchange(&request(None), Some(input), deadline)?;
        if matches!(answer, Response::UnknownPolicy) {
            // This time the child compiles it first.
            let text = Some(policy.text.to_string());
            let deadline = deadline + self.limits.compile_timeout;
            answer = self.exchange(&request(text), Some(input), deadline)?;
        }
        match answer {
            Response::Decided(messages) => Ok(messages),
            Response::Failed(error) => Err(error),
            other => Err(unexpected(&other)),
        }
    }

    /// How long the parent waits for an answer: the policy's own limit, then as long again
    /// (at least 200 ms) for the child to notice it, before it is killed.
    fn deadline(&self) -> Duration {
        self.limits.timeout + self.limits.timeout.max(Duration::from_millis(200))
    }

    /// Sends one request to an idle child (or a new one) and waits for its answer. A memory
    /// overrun, a crash or a missed deadline ends that child.
    fn exchange(
        &self,
        request: &Request,
        input: Option<&str>,
        deadline: Duration,
    ) -> Result<Response, PolicyEvalError> {
        let header = serde_json::to_vec(request)
            .map_err(|e| PolicyEvalError::Failed(format!("cannot encode the request: {e}")))?;
        let mut evaluator = self.take()?;
        // An idle child may have died meanwhile: a failed write gets one fresh child.
        if send(&mut evaluator, &header, input).is_err() {
            evaluator = self.spawn()?;
            send(&mut evaluator, &header, input).map_err(|e| self.crashed(&mut evaluator, &e))?;
        }
        let frame = match evaluator.answers.recv_timeout(deadline) {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return Err(self.crashed(&mut evaluator, &e)),
            Err(RecvTimeoutError::Disconnected) => {
                let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(self.crashed(&mut evaluator, &e));
            }
            Err(RecvTimeoutError::Timeout) => {
                // Dropping it kills it.
                return Err(PolicyEvalError::timeout(self.limits.timeout));
            }
        };
        let answer: Response = serde_json::from_slice(&frame).map_err(|e| {
            PolicyEvalError::Failed(format!("the policy evaluator answered nonsense: {e}"))
        })?;
        if let Response::MemoryExceeded { requested, used } = answer {
            return Err(PolicyEvalError::Memory {
                limit_bytes: self.limits.memory_limit_bytes,
                requested,
                used,
            });
        }
        self.put_back(evaluator);
        Ok(answer)
    }

    fn take(&self) -> Result<Evaluator, PolicyEvalError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(evaluator) => Ok(evaluator),
            None => self.spawn(),
        }
    }

    fn put_back(&self, evaluator: Evaluator) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(evaluator);
        }
    }

    fn spawn(&self) -> Result<Evaluator, PolicyEvalError> {
        let mut child = Command::new(&self.program)
            .arg(CHILD_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                PolicyEvalError::Unavailable(format!(
                    "cannot start `{} {CHILD_COMMAND}`: {e}",
                    self.program.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(PolicyEvalError::Unavailable(
                "the evaluator's pipes were not set up".into(),
            ));
        };
        let (tx, answers) = mpsc::channel();
        // A reader per child, so that waiting for an answer can have a deadline. It ends when
        // the child's stdout closes (the child ended).
        std::thread::Builder::new()
            .name("policy-evaluator-reader".into())
            .spawn(move || {
                let mut stdout = BufReader::new(stdout);
                loop {
                    let frame = read_frame(&mut stdout, MAX_RESPONSE_FRAME);
                    let end = !matches!(frame, Ok(Some(_)));
                    let sent = match frame {
                        Ok(Some(frame)) => tx.send(Ok(frame)),
                        Ok(None) => break,
                        Err(e) => tx.send(Err(e)),
                    };
                    if end || sent.is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| {
                PolicyEvalError::Unavailable(format!("cannot start a reader thread: {e}"))
            })?;
        let mut evaluator = Evaluator {
            child,
            stdin,
            answers,
        };
        // Deadlines count from a started child: wait for it to say so (bounded, too).
        match evaluator.answers.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(frame)) if matches!(serde_json::from_slice(&frame), Ok(Response::Ready)) => {
                Ok(evaluator)
            }
            Ok(Ok(_)) => Err(PolicyEvalError::Unavailable(
                "the evaluator did not start as expected".into(),
            )),
            Ok(Err(e)) => Err(self.crashed(&mut evaluator, &e)),
            Err(_) => Err(PolicyEvalError::Unavailable(format!(
                "the evaluator did not start within {} s",
                STARTUP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The child ended (or broke its stream) before answering: why, from its exit status.
    fn crashed(&self, evaluator: &mut Evaluator, error: &io::Error) -> PolicyEvalError {
        let status = match evaluator.child.try_wait() {
            Ok(Some(status)) => Some(status),
            // It may still be closing: give it a moment, then kill it.
            _ => {
                std::thread::sleep(Duration::from_millis(20));
                let _ = evaluator.child.kill();
                evaluator.child.wait().ok()
            }
        };
        match status {
            Some(status) if status.code() == Some(EXIT_MEMORY) => PolicyEvalError::Memory {
                limit_bytes: self.limits.memory_limit_bytes,
                requested: 0,
                used: 0,
            },
            Some(status) => PolicyEvalError::Crashed(describe(status)),
            None => PolicyEvalError::Crashed(format!("its output broke off: {error}")),
        }
    }
}

fn send(evaluator: &mut Evaluator, header: &[u8], input: Option<&str>) -> io::Result<()> {
    write_frame(&mut evaluator.stdin, header)?;
    if let Some(input) = input {
        write_frame(&mut evaluator.stdin, input.as_bytes())?;
    }
    Ok(())
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with status {code}"),
        (None, Some(6)) => "it aborted (SIGABRT)".to_string(),
        (None, Some(11)) => "it crashed (SIGSEGV)".to_string(),
        (None, Some(9)) => "it was killed (SIGKILL)".to_string(),
        (None, Some(signal)) => format!("it was ended by signal {signal}"),
        (None, None) => "it ended".to_string(),
    }
}

fn unexpected(answer: &Response) -> PolicyEvalError {
    PolicyEvalError::Failed(format!(
        "the policy evaluator gave an unexpected answer: {answer:?}"
    ))
}
