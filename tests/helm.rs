//! The Helm chart (issue 7): lint and render every value set, server-side dry-run, install,
//! upgrade with a changed CRD, uninstall, and what the chart's ServiceAccount may and may not
//! do, on the real control plane of tests/testenv.

mod broker;
mod support;

#[path = "e2e/stack.rs"]
mod stack;

#[path = "helm/chart.rs"]
mod chart;
#[path = "helm/cluster.rs"]
mod cluster;
#[path = "helm/crds.rs"]
mod crds;
#[path = "helm/guard_values.rs"]
mod guard_values;
#[path = "helm/hook_values.rs"]
mod hook_values;
#[path = "helm/operator.rs"]
mod operator;
#[path = "helm/release.rs"]
mod release;
#[path = "helm/render.rs"]
mod render;
#[path = "helm/sufficiency.rs"]
mod sufficiency;
