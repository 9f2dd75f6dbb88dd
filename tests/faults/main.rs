//! The fault suite: the whole system (the operator binary, the real control plane, Mosquitto
//! with mutual TLS, the reference backend) under real faults, each test closed by the same
//! books ([`books::balance`]). `cargo test --test faults` is the short mode that CI runs;
//! `scripts/fault-suite --full` (`FAULT_SUITE=full`) samples more runs and more faults.
//! docs/reliability.md says which promise each test proves and what the last full run showed.

#[path = "../broker/mod.rs"]
mod broker;
#[path = "../e2e/stack.rs"]
mod stack;
#[path = "../support/mod.rs"]
mod support;

mod admission;
mod audit;
mod bench;
mod books;

mod apiserver_outage;
mod broker_restart;
mod defects;
mod leader_failover;
mod node_loss;
mod operator_kill;
mod refused_writes;
mod scale_down;
