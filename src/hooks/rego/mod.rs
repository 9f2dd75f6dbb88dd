//! Rego initialization policies, evaluated with regorus before the run Pod exists, in a child
//! process of the operator's own binary.
//!
//! Why a child process: regorus sizes some allocations from policy values, and a process
//! cannot survive a failed allocation. Measured with regorus 0.14.1 and its
//! `allocator-memory-limits` feature (its own mimalloc and a 32 MiB global limit): a 72 TB
//! `numbers.range` is caught (mimalloc reserves it lazily, and the limit check after the
//! builtin fails it), but `numbers.range(1, 3e14)` (7.2 PB) aborts the process
//! (`memory allocation of 7200000000000000 bytes failed`, SIGABRT), and
//! `sprintf("%0999999999d", [1])` took 15.6 s and 1.9 GB of memory before the limit was
//! checked. Its limits are also process-wide, not per evaluation. So the operator runs
//! regorus in `workerpool-operator policy-evaluator` children ([`child`]), whose allocator
//! (`workerpool-budget-alloc`) ends the child *before* an allocation past the evaluation's
//! budget; the parent ([`evaluator`]) denies the run with the policy's name, the limit and the
//! fix, kills a child that overruns its deadline, and starts new children as needed.
//!
//! One file per job: [`engine`] (regorus: compile, evaluate `deny`), [`wire`] (the frames
//! between parent and child), [`child`] (the child's loop) and [`evaluator`] (the parent's pool
//! of children and the [`Policy`] handle the pipeline calls).

pub mod child;
pub mod engine;
pub mod evaluator;
mod wire;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use evaluator::{Policy, PolicyEvaluator, PolicyLimits};

/// The hidden subcommand of `workerpool-operator` that runs a policy evaluator child.
pub const CHILD_COMMAND: &str = "policy-evaluator";

/// Which Rego syntax a policy is written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegoVersion {
    /// Rego v1 first; if that fails to parse, Rego v0 (the seed's `deny["..."] { ... }`).
    #[default]
    Auto,
    V0,
    V1,
}

/// Why a policy could not be compiled. The caller adds where the policy came from.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum PolicyError {
    #[error("{0}")]
    Syntax(String),
    #[error(
        "the policy declares {found}, but initialization policies must declare `package spacelift`"
    )]
    Package { found: String },
    #[error("the policy cannot be prepared: {0}")]
    Prepare(String),
    /// Compiling it went over a limit, or the evaluator could not compile it at all.
    #[error("compiling it failed: {0}")]
    Evaluator(#[source] PolicyEvalError),
}

/// Why an evaluation failed. Every failure denies the run.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum PolicyEvalError {
    #[error(
        "evaluation took longer than {limit_millis} ms (the policy time limit); the run is denied"
    )]
    Timeout { limit_millis: u64 },
    #[error("evaluation failed: {0}; the run is denied")]
    Failed(String),
    #[error(
        "exceeded its memory limit of {} MiB (it asked for {requested} bytes more with {} in use); raise limits.maxPolicyMemoryMib (Helm value hooks.limits.maxPolicyMemoryMib) if it needs more, or fix the policy; the run is denied",
        limit_bytes >> 20,
        mib(*used)
    )]
    Memory {
        limit_bytes: u64,
        requested: u64,
        used: u64,
    },
    #[error(
        "the policy evaluator process ended while evaluating it ({0}; a stack overflow from deeply nested rules or data ends it this way); the run is denied"
    )]
    Crashed(String),
    #[error("the policy evaluator process cannot be used: {0}; the run is denied")]
    Unavailable(String),
}

impl PolicyEvalError {
    /// A short, stable word for metrics (`kind` label).
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyEvalError::Timeout { .. } => "timeout",
            PolicyEvalError::Failed(_) | PolicyEvalError::Unavailable(_) => "error",
            PolicyEvalError::Memory { .. } => "memory",
            PolicyEvalError::Crashed(_) => "trap",
        }
    }

    pub(crate) fn timeout(limit: Duration) -> Self {
        PolicyEvalError::Timeout {
            limit_millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}
