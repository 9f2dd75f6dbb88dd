//! What evaluating Rego in a `policy-evaluator` child costs, against regorus in process (which
//! the operator no longer does: see src/hooks/rego/mod.rs). `cargo bench --bench policy`;
//! results go to docs/plugins.md ("What it costs").

use std::time::{Duration, Instant};

use workerpool_operator::hooks::rego::engine::Compiled;
use workerpool_operator::hooks::{PolicyEvaluator, PolicyLimits, RegoVersion};

const SEED: &str = "package spacelift\n\ndeny[\"you shall not pass\"] {\n    false\n}\n";
const FIVE: &str = r#"package spacelift
import rego.v1
deny contains "privileged" if { some c in input.pod.spec.containers; c.securityContext.privileged }
deny contains "no stage" if input.run.stage == ""
deny contains msg if { some c in input.pod.spec.containers; endswith(c.image, ":latest"); msg := sprintf("%s floats", [c.name]) }
deny contains "host network" if input.pod.spec.hostNetwork
deny contains "too many" if count(input.pod.spec.containers) > 10
"#;

#[path = "common/timing.rs"]
mod timing;

use timing::{micros, time};

fn main() {
    // A run Pod's size of input (about 4 KB), as the pipeline sends it.
    let input = serde_json::json!({
        "run": {"stage": "planning", "runId": "01HN37WC3MCNE3CY9HAHWRF06K"},
        "runnerImage": "ubuntu:24.04",
        "pod": {"spec": {"containers": (0..3).map(|i| serde_json::json!({
            "name": format!("c{i}"), "image": "public.ecr.aws/spacelift/runner:1.0",
            "env": (0..20).map(|j| serde_json::json!({"name": format!("VAR_{j}"), "value": "x".repeat(32)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()}},
    })
    .to_string();
    println!("input: {} bytes", input.len());
    let evaluator = PolicyEvaluator::new(
        env!("CARGO_BIN_EXE_workerpool-operator"),
        PolicyLimits::default(),
    );
    let started = Instant::now();
    let first = evaluator
        .compile("seed", "seed.rego", SEED, RegoVersion::Auto)
        .expect("compiles");
    println!(
        "first compile in a new child (starting it included): {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(first);
    for (name, text) in [("seed (v0)", SEED), ("five rules (v1)", FIVE)] {
        let in_process = Compiled::compile(name, "p.rego", text, RegoVersion::Auto).unwrap();
        let (p50, p99) = time(1000, || {
            in_process
                .evaluate(&input, Duration::from_millis(100))
                .unwrap();
        });
        println!(
            "{name:16} in process:   p50 {:>7.1} µs  p99 {:>7.1} µs",
            micros(p50),
            micros(p99)
        );
        let started = Instant::now();
        let policy = evaluator
            .compile(name, "p.rego", text, RegoVersion::Auto)
            .unwrap();
        let compile = started.elapsed();
        let (p50, p99) = time(1000, || {
            policy.evaluate(&input).unwrap();
        });
        println!(
            "{name:16} in a child:   p50 {:>7.1} µs  p99 {:>7.1} µs  (compile {:.2} ms)",
            micros(p50),
            micros(p99),
            compile.as_secs_f64() * 1e3
        );
    }
    // The price of a memory overrun: the child ends, and the next evaluation starts a new one.
    let hungry = evaluator
        .compile(
            "hungry",
            "hungry.rego",
            "package spacelift\nimport rego.v1\ndeny contains \"x\" if count(numbers.range(1, 300000000000000)) > 0",
            RegoVersion::Auto,
        )
        .unwrap();
    let (p50, _) = time(20, || {
        let _ = hungry.evaluate(&input);
    });
    println!(
        "memory overrun + new child:  p50 {:.1} ms",
        p50.as_secs_f64() * 1e3
    );
}
