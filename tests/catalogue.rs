//! The bad-input catalogue (issue 12): what tenants and a faulty backend hand the operator,
//! each case asserting the exact message a user sees and where (a WorkerPool or Worker event,
//! a condition, the backend's record of the run, the operator's log, `render`'s stderr, the
//! apiserver's answer), while a second pool keeps running runs through the same operator.
//! docs/bad-input.md lists every case. The operator binary runs against the real control plane,
//! a real Mosquitto with mutual TLS and the reference backend, one stack per group of cases.

mod broker;
mod support;

#[path = "e2e/stack.rs"]
mod stack;

#[path = "catalogue/harness.rs"]
mod harness;
#[path = "catalogue/hooks.rs"]
mod hooks;
#[path = "catalogue/mqtt.rs"]
mod mqtt;
#[path = "catalogue/secrets.rs"]
mod secrets;
#[path = "catalogue/specs.rs"]
mod specs;
#[path = "catalogue/survival.rs"]
mod survival;
