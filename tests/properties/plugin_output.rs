//! What a plugin returns: any bytes, and any document that is almost a valid answer (a Pod
//! with the operator's labels, names, owner or containers changed, odd images and host lists,
//! unknown fields), through the real WASM host and the real pipeline. Never a panic; a denial
//! names the plugin (or the final invariant checks); an allowed Pod keeps every invariant, runs the image the hooks chose
//! from a host they allowed, and carries a trail annotation of bounded size.

use std::fmt::Write as _;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde_json::{Value, json};
use workerpool_operator::hooks::invariants::{violations, worker_image};
use workerpool_operator::hooks::pipeline::INVARIANTS_HOOK;
use workerpool_operator::hooks::{
    Decision, FailurePolicy, GUARD_HOOK, HookInput, Pipeline, Plugin, PluginEntry, TRAIL_ANNOTATION,
};
use workerpool_operator::pod::ImageReference;

use crate::config;
use crate::hooks_support::{host, pool, run, spec, worker};

/// A plugin whose `evaluate` answers `output`, byte for byte (a data segment).
fn answering(output: &[u8]) -> String {
    let mut data = String::with_capacity(output.len() * 3);
    for byte in output {
        let _ = write!(data, "\\{byte:02x}");
    }
    let input_at = (1024 + output.len()).next_multiple_of(8);
    // Room for the input document (the run Pod, ~10 KB) after the output.
    let pages = (input_at + (256 << 10)) / 65536 + 1;
    let packed = (1024u64 << 32) | output.len() as u64;
    format!(
        r#"(module
  (memory (export "memory") {pages})
  (data (i32.const 16) "{{\"valid\":true}}")
  (data (i32.const 1024) "{data}")
  (func (export "workerpool_abi_v1"))
  (func (export "alloc") (param i32) (result i32) i32.const {input_at})
  (func (export "validate_settings") (param i32 i32) (result i64) i64.const 0x000000100000000e)
  (func (export "evaluate") (param i32 i32) (result i64) i64.const {packed}))"#
    )
}

fn input() -> HookInput {
    let pool = pool();
    HookInput::build(&pool, &worker(&pool), &run()).expect("the seed pool builds")
}

fn decide(output: &[u8]) -> Result<Decision, TestCaseError> {
    let plugin = Plugin::load(
        &host(),
        "echo",
        answering(output).as_bytes(),
        &spec(None, FailurePolicy::Fail),
    )
    .map_err(|e| TestCaseError::fail(format!("the echo plugin does not load: {e}")))?;
    let pipeline = Pipeline {
        pool_plugins: vec![PluginEntry::Ready(Arc::new(plugin))],
        scope: "default/test-workerpool".into(),
        ..Pipeline::default()
    };
    Ok(pipeline.evaluate(input()))
}

/// One change a plugin might make to the Pod it was given.
#[derive(Clone, Debug)]
enum Mutation {
    Name(String),
    Namespace(String),
    NoOwner,
    OnlyTeamLabel,
    WorkerImage(String),
    RenameGrpc(String),
    NoContainers,
    RemoveContainer(usize),
    OperatorLabel(String, String),
    OperatorAnnotation(String),
    NullSpec,
    NodeName(String),
}

impl Mutation {
    fn apply(&self, pod: &mut Value) {
        let mut set = |pointer: &str, value: Value| {
            if let Some(slot) = pod.pointer_mut(pointer) {
                *slot = value;
            }
        };
        match self {
            Mutation::Name(name) => set("/metadata/name", json!(name)),
            Mutation::Namespace(ns) => set("/metadata/namespace", json!(ns)),
            Mutation::NoOwner => set("/metadata/ownerReferences", json!([])),
            Mutation::OnlyTeamLabel => set("/metadata/labels", json!({"team": "a"})),
            Mutation::WorkerImage(image) => set("/spec/containers/1/image", json!(image)),
            Mutation::RenameGrpc(name) => set("/spec/containers/0/name", json!(name)),
            Mutation::NoContainers => set("/spec/containers", json!([])),
            Mutation::NullSpec => set("/spec", Value::Null),
            Mutation::NodeName(node) => {
                if let Some(spec) = pod.pointer_mut("/spec").and_then(Value::as_object_mut) {
                    spec.insert("nodeName".into(), json!(node));
                }
            }
            Mutation::RemoveContainer(i) => {
                if let Some(containers) = pod
                    .pointer_mut("/spec/containers")
                    .and_then(Value::as_array_mut)
                    && *i < containers.len()
                {
                    containers.remove(*i);
                }
            }
            Mutation::OperatorLabel(key, value) => {
                if let Some(labels) = pod
                    .pointer_mut("/metadata/labels")
                    .and_then(Value::as_object_mut)
                {
                    labels.insert(format!("workers.spacelift.io/{key}"), json!(value));
                }
            }
            Mutation::OperatorAnnotation(key) => {
                if let Some(meta) = pod.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                    meta.insert(
                        "annotations".into(),
                        json!({format!("workers.spacelift.io/{key}"): "x"}),
                    );
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        "[a-z0-9.-]{0,20}".prop_map(Mutation::Name),
        "[a-z]{0,8}".prop_map(Mutation::Namespace),
        Just(Mutation::NoOwner),
        Just(Mutation::OnlyTeamLabel),
        "[a-z0-9:/._-]{0,30}".prop_map(Mutation::WorkerImage),
        "[a-z-]{1,12}".prop_map(Mutation::RenameGrpc),
        Just(Mutation::NoContainers),
        (0usize..3).prop_map(Mutation::RemoveContainer),
        ("[a-z.-]{1,30}", "[a-z0-9]{0,10}").prop_map(|(k, v)| Mutation::OperatorLabel(k, v)),
        "[a-z/.]{1,30}".prop_map(Mutation::OperatorAnnotation),
        Just(Mutation::NullSpec),
        any::<String>().prop_map(Mutation::NodeName),
    ]
}

/// An answer document: allowed or not, with any message, a mutated Pod, an image, a host list
/// and sometimes a field the ABI does not have.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        option::of(any::<String>()),
        option::of(vec(mutation(), 0..4)),
        option::of(prop_oneof![
            Just("ubuntu:24.04".to_string()),
            Just("evil.example.com/x:1".to_string()),
            "[a-zA-Z0-9:/@._-]{0,30}",
        ]),
        option::of(vec(
            prop_oneof![
                Just("docker.io".to_string()),
                Just("evil.example.com".to_string()),
                "[a-z.]{0,12}"
            ],
            0..3,
        )),
        any::<bool>(),
    )
        .prop_map(
            |(allowed, message, mutations, runner_image, hosts, extra)| {
                let mut answer = json!({"allowed": allowed});
                if let Some(message) = message {
                    answer["message"] = json!(message);
                }
                if let Some(mutations) = mutations {
                    let mut pod = serde_json::to_value(&input().pod).unwrap_or_default();
                    for mutation in &mutations {
                        mutation.apply(&mut pod);
                    }
                    answer["pod"] = pod;
                }
                if let Some(image) = runner_image {
                    answer["runnerImage"] = json!(image);
                }
                if let Some(hosts) = hosts {
                    answer["allowedRunnerImageHosts"] = json!(hosts);
                }
                if extra {
                    answer["allow"] = json!(true);
                }
                serde_json::to_vec(&answer).unwrap_or_default()
            },
        )
}

fn check(decision: &Decision) -> Result<(), TestCaseError> {
    match decision {
        Decision::Denied(denial) => {
            // The plugin itself, or the final checks no hook can skip: the invariants (an image
            // from a host the hooks left disallowed, say) and the run-Pod guard (an empty
            // host list, a `nodeName`).
            prop_assert!(
                ["echo", INVARIANTS_HOOK, GUARD_HOOK].contains(&denial.hook.as_str()),
                "denied by {:?}",
                denial.hook
            );
            prop_assert!(!denial.reasons.is_empty());
        }
        Decision::Allowed(allowed) => {
            // The trail annotation is the pipeline's own, written after the invariants held.
            let built = input().pod;
            let mut returned = allowed.pod.clone();
            if let Some(annotations) = returned.metadata.annotations.as_mut() {
                annotations.remove(TRAIL_ANNOTATION);
            }
            prop_assert_eq!(violations(&built, &returned), Vec::<String>::new());
            prop_assert_eq!(
                worker_image(&allowed.pod),
                Some(allowed.runner_image.as_str())
            );
            let reference = ImageReference::parse(&allowed.runner_image)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(reference.host_is_allowed(&allowed.allowed_runner_image_hosts));
            let trail = allowed
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRAIL_ANNOTATION))
                .map(String::len)
                .unwrap_or_default();
            prop_assert!(
                trail > 0 && trail <= 8192,
                "trail annotation of {} bytes",
                trail
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn any_bytes_from_a_plugin_deny_or_allow_within_the_invariants(output in vec(any::<u8>(), 0..2048)) {
        check(&decide(&output)?)?;
    }

    #[test]
    fn any_almost_valid_answer_denies_or_allows_within_the_invariants(output in answer()) {
        check(&decide(&output)?)?;
    }
}

#[test]
fn an_answer_over_the_output_cap_denies_naming_the_cap() {
    let output = vec![b' '; (1 << 20) + 1];
    let Ok(Decision::Denied(denial)) = decide(&output) else {
        panic!("an oversized answer must deny");
    };
    assert_eq!(
        denial.reasons,
        [
            "pool plugin \"echo\" failed: returned 1048577 bytes of output, more than the limit of 1048576 bytes"
        ]
    );
}
