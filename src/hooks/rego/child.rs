//! The policy evaluator child: `workerpool-operator policy-evaluator`, started by the operator
//! (never by hand). It reads requests on stdin and answers on stdout ([`super::wire`]), one at
//! a time, and keeps the policies it compiled (the few it used last).
//!
//! Each request runs under a memory budget: the binary's allocator
//! (`workerpool-budget-alloc`) ends this process, with [`EXIT_MEMORY`] and a
//! [`Response::MemoryExceeded`] frame, before an allocation that would go over it. A child
//! lives until its parent closes stdin, or dies.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use super::engine::Compiled;
use super::wire::{
    EXIT_MEMORY, MAX_REQUEST_FRAME, PolicyRef, Request, Response, memory_exceeded_frame,
    read_frame, write_frame,
};
use super::{PolicyError, PolicyEvalError};

/// How many compiled policies a child keeps (the parent sends the text again for others).
const CACHED_POLICIES: usize = 16;

/// Where answers go: a copy of stdout, written to without a buffer (the allocator's handler
/// writes its frame here and must not allocate).
static ANSWERS: OnceLock<File> = OnceLock::new();

/// Serves requests until stdin closes.
pub fn serve() -> ExitCode {
    let answers = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => ANSWERS.get_or_init(|| File::from(fd)),
        Err(e) => {
            eprintln!("policy-evaluator: cannot use stdout: {e}");
            return ExitCode::FAILURE;
        }
    };
    budget_alloc::track(memory_exceeded);
    // Starting takes a while (the binary is large); the parent counts deadlines from here.
    let ready = serde_json::to_vec(&Response::Ready)
        .map_err(io::Error::other)
        .and_then(|bytes| write_frame(&mut &*answers, &bytes));
    if let Err(e) = ready {
        eprintln!("policy-evaluator: cannot answer: {e}");
        return ExitCode::FAILURE;
    }
    let mut requests = BufReader::new(io::stdin().lock());
    let mut cache: VecDeque<(String, Compiled)> = VecDeque::new();
    loop {
        let request = match read_frame(&mut requests, MAX_REQUEST_FRAME) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("policy-evaluator: cannot read a request: {e}");
                return ExitCode::FAILURE;
            }
        };
        let response = match serde_json::from_slice::<Request>(&request) {
            Ok(Request::Compile {
                policy,
                text,
                memory_limit_bytes,
            }) => {
                let compiled = within(memory_limit_bytes, || compile(&policy, &text));
                match compiled {
                    Ok(compiled) => {
                        let response = Response::Compiled {
                            version: compiled.version(),
                            has_deny: compiled.has_deny(),
                        };
                        keep(&mut cache, policy.digest, compiled);
                        response
                    }
                    Err(e) => Response::NotCompiled(e),
                }
            }
            Ok(Request::Evaluate {
                policy,
                text,
                timeout_millis,
                memory_limit_bytes,
            }) => {
                let input = match read_frame(&mut requests, MAX_REQUEST_FRAME) {
                    Ok(Some(input)) => input,
                    _ => {
                        eprintln!("policy-evaluator: an evaluation without its input");
                        return ExitCode::FAILURE;
                    }
                };
                let timeout = Duration::from_millis(timeout_millis);
                evaluate(
                    &mut cache,
                    policy,
                    text,
                    &input,
                    timeout,
                    memory_limit_bytes,
                )
            }
            Err(e) => Response::Failed(PolicyEvalError::Failed(format!(
                "the policy evaluator did not understand its request: {e}"
            ))),
        };
        let answered = serde_json::to_vec(&response)
            .map_err(io::Error::other)
            .and_then(|bytes| write_frame(&mut &*answers, &bytes));
        if let Err(e) = answered {
            eprintln!("policy-evaluator: cannot answer: {e}");
            return ExitCode::FAILURE;
        }
    }
}

fn evaluate(
    cache: &mut VecDeque<(String, Compiled)>,
    policy: PolicyRef,
    text: Option<String>,
    input: &[u8],
    timeout: Duration,
    memory_limit_bytes: u64,
) -> Response {
    let position = cache
        .iter()
        .position(|(digest, _)| *digest == policy.digest);
    let compiled = match (position, text) {
        (Some(i), _) => cache.remove(i).map(|(_, c)| c),
        (None, Some(text)) => match within(memory_limit_bytes, || compile(&policy, &text)) {
            Ok(compiled) => Some(compiled),
            Err(e) => return Response::Failed(PolicyEvalError::Failed(e.to_string())),
        },
        (None, None) => None,
    };
    let Some(compiled) = compiled else {
        return Response::UnknownPolicy;
    };
    let Ok(input) = std::str::from_utf8(input) else {
        return Response::Failed(PolicyEvalError::Failed("the input is not UTF-8".into()));
    };
    let result = within(memory_limit_bytes, || {
        compiled
            .evaluate(input, timeout)
            .map(crate::protocol::limits::cap_messages)
    });
    keep(cache, policy.digest, compiled);
    match result {
        Ok(messages) => Response::Decided(messages),
        Err(e) => Response::Failed(e),
    }
}

fn compile(policy: &PolicyRef, text: &str) -> Result<Compiled, PolicyError> {
    Compiled::compile(&policy.name, &policy.file, text, policy.version)
}

/// Runs `f` with `limit` bytes to allocate.
fn within<T>(limit: u64, f: impl FnOnce() -> T) -> T {
    budget_alloc::arm(usize::try_from(limit).unwrap_or(usize::MAX));
    let result = f();
    budget_alloc::disarm();
    result
}

fn keep(cache: &mut VecDeque<(String, Compiled)>, digest: String, compiled: Compiled) {
    cache.retain(|(d, _)| *d != digest);
    cache.push_front((digest, compiled));
    cache.truncate(CACHED_POLICIES);
}

/// The allocator's handler: says why on the answer stream, and ends the child. Allocates
/// nothing itself.
fn memory_exceeded(exceeded: budget_alloc::Exceeded) -> ! {
    let mut frame = [0u8; 128];
    let len = memory_exceeded_frame(&mut frame, exceeded.requested as u64, exceeded.used as u64);
    if let Some(mut answers) = ANSWERS.get() {
        let _ = answers.write_all(&frame[..len]);
    }
    std::process::exit(EXIT_MEMORY)
}
