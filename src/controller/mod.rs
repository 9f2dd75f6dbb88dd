//! The controller: WorkerPools -> Workers -> run Pods, and the backend link that drives them.

pub mod history;
pub mod keys;
pub mod outcome;
pub mod plan;
