//! The hook pipeline: WASM plugins and Rego initialization policies that may change or refuse a
//! run Pod before it is created. See docs/plugins.md.
//!
//! One file per job:
//! - [`host`]: the wasmtime engine, the epoch ticker and the module cache, and [`compile`] its
//!   bounded compile queue;
//! - `wasi`: the host's own WASI preview1 surface (no files, network or environment);
//! - [`abi`]: one call into a plugin (fresh store, deadline, memory cap, output cap);
//! - [`plugin`]: a loaded plugin and the ABI's JSON documents;
//! - [`rego`]: initialization policies (regorus, in a child process of the operator's binary);
//! - [`pipeline`]: the stages in order, and the [`Decision`];
//! - [`invariants`]: what no hook may change, and `allowedRunnerImageHosts`;
//! - `guard_step`: the cluster admin's run-Pod guard ([`crate::guard`]), last;
//! - [`trail`]: the record of which hook did what, written onto the Pod;
//! - [`source`]: ConfigMaps and the pool's initialization policy volume;
//! - [`registry`]: live hooks, hot reload, whether they have loaded;
//! - [`report`]: load reports and the `HooksReady` condition;
//! - [`config`]: the operator's cluster-wide hook configuration file, and [`limits`] its limits;
//! - [`slots`]: how many pipelines evaluate at once, in all and per pool;
//! - [`metrics`]: per-hook metrics;
//! - [`offline`]: hooks from files, for `render` and `plugin check`.

pub mod abi;
pub mod compile;
pub mod config;
mod guard_step;
pub mod host;
pub mod input;
pub mod invariants;
pub mod limits;
pub mod metrics;
pub mod offline;
pub mod pipeline;
pub mod plugin;
pub mod registry;
pub mod rego;
pub mod report;
pub mod slots;
pub mod source;
mod spec;
pub mod trail;
mod wasi;

pub use config::HookConfig;
pub use guard_step::GUARD_HOOK;
pub use host::{HostLimits, WasmHost};
pub use input::{HookInput, PoolContext, WorkerContext};
pub use metrics::HookMetrics;
pub use pipeline::{Allowed, Decision, Denial, Pipeline, PluginEntry, PolicyEntry};
pub use plugin::Plugin;
pub use registry::{HookRegistry, LoadReport};
pub use rego::{Policy, PolicyEvaluator, PolicyLimits, RegoVersion};
pub use slots::{EvaluationSlots, SlotLimits};
pub use spec::{FailurePolicy, PluginSpec, PolicySpec};
pub use trail::{HookRecord, Outcome, Stage, TRAIL_ANNOTATION};
