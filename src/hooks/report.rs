//! What a load of hooks reports: each hook's fate, and the WorkerPool's `HooksReady`
//! condition built from it. Written to events, conditions, logs and metrics by the caller.

use std::fmt;

use super::spec::FailurePolicy;

/// Event reason and condition reason for a hook that failed to load.
pub const REASON_LOAD_FAILED: &str = "HookLoadFailed";
/// Condition reason when every hook loaded.
pub const REASON_LOADED: &str = "HooksLoaded";
/// The WorkerPool condition type that reports the pool's hooks.
pub const CONDITION_TYPE: &str = "HooksReady";

/// A plugin or a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Plugin,
    Policy,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::Plugin => "plugin",
            HookKind::Policy => "policy",
        })
    }
}

/// What happened to one hook in a load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadStatus {
    /// A new version is in service.
    Loaded { digest: String },
    /// Nothing changed.
    Unchanged,
    /// The new version failed; the previous one stays in service.
    KeptPrevious { digest: String, error: String },
    /// The plugin has never loaded; its failure policy decides what runs do.
    Unavailable {
        error: String,
        failure_policy: FailurePolicy,
    },
    /// The policy does not compile or cannot be read: the scope's runs are denied.
    Broken { error: String },
}

/// One hook's line in a [`LoadReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadResult {
    pub kind: HookKind,
    pub name: String,
    /// Where it came from, e.g. `ConfigMap ops/mirror key plugin.wasm`.
    pub source: String,
    pub status: LoadStatus,
}

impl LoadResult {
    pub fn is_problem(&self) -> bool {
        !matches!(
            self.status,
            LoadStatus::Loaded { .. } | LoadStatus::Unchanged
        )
    }

    /// A sentence for an event or a condition message.
    pub fn message(&self) -> String {
        let what = format!("{} {:?} ({})", self.kind, self.name, self.source);
        match &self.status {
            LoadStatus::Loaded { digest } => format!("{what}: loaded {digest}"),
            LoadStatus::Unchanged => format!("{what}: unchanged"),
            LoadStatus::KeptPrevious { digest, error } => {
                format!("{what}: {error}; the previous version {digest} stays in service")
            }
            LoadStatus::Unavailable {
                error,
                failure_policy: FailurePolicy::Fail,
            } => format!("{what}: {error}; runs are denied until it loads (failurePolicy: Fail)"),
            LoadStatus::Unavailable {
                error,
                failure_policy: FailurePolicy::Ignore,
            } => format!("{what}: {error}; runs go on without it (failurePolicy: Ignore)"),
            LoadStatus::Broken { error } => {
                format!("{what}: {error}; runs are denied until it is fixed")
            }
        }
    }
}

/// The outcome of loading one scope's hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// `cluster` or `<namespace>/<pool>`.
    pub scope: String,
    pub results: Vec<LoadResult>,
}

/// A condition for the WorkerPool's status, from a [`LoadReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HooksCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl LoadReport {
    pub fn problems(&self) -> impl Iterator<Item = &LoadResult> {
        self.results.iter().filter(|r| r.is_problem())
    }

    pub fn is_healthy(&self) -> bool {
        self.problems().next().is_none()
    }

    /// `HooksReady`: true when every hook loaded, else false with every problem.
    pub fn condition(&self) -> HooksCondition {
        HooksCondition::from_problems(self.problems().map(LoadResult::message).collect(), || {
            format!("{} hooks loaded", self.results.len())
        })
    }
}

impl HooksCondition {
    /// False with every problem, or true with `loaded()` when there is none.
    pub fn from_problems(problems: Vec<String>, loaded: impl FnOnce() -> String) -> Self {
        if problems.is_empty() {
            Self {
                type_: CONDITION_TYPE,
                status: true,
                reason: REASON_LOADED,
                message: loaded(),
            }
        } else {
            Self {
                type_: CONDITION_TYPE,
                status: false,
                reason: REASON_LOAD_FAILED,
                message: problems.join("; "),
            }
        }
    }
}
