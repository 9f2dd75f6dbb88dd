//! Plugins and policies a namespace owner or a ConfigMap writer gets wrong, or writes to hurt:
//! bad modules, traps, timeouts, memory, huge outputs, gzip bombs, broken or greedy Rego, odd
//! `deny` values, policies the operator cannot find. Each case is a pool of its own: what fails
//! to load is named on the pool (`HooksReady`, a `HookLoadFailed` event), and every run of it
//! is denied before a Pod exists, named on the Worker and in the backend's record.

use std::collections::BTreeMap;
use std::io::Write as _;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use crate::harness::{Catalogue, Seen, verdict};
use crate::stack::{initialization_policy_yaml, pool_yaml};
use crate::support;

/// What a case's pool gets: a plugin module, or an initialization policy.
pub enum Hook {
    /// `spec.plugins: [{configMap: <pool>-hook, ...extra}]` with `bytes` under `plugin.wasm`
    /// (or `plugin.wasm.gz` when `gzipped`).
    Plugin {
        bytes: Vec<u8>,
        gzipped: bool,
        extra: &'static str,
    },
    /// The seed's recipe: the policy in ConfigMap `<pool>-hook`, mounted into `init`.
    Policy(String),
    /// Spec YAML of its own (a policy the operator cannot follow), and the ConfigMap's data.
    Spec {
        spec: &'static str,
        policy: Option<String>,
    },
}

pub struct HookCase {
    pub name: &'static str,
    pub hook: Hook,
    /// Where it shows: `{pool}` is the case's pool.
    pub seen: Vec<Seen>,
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = support::repo_root().join(format!("tests/fixtures/plugins/{name}.wat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

fn plugin(bytes: Vec<u8>) -> Hook {
    Hook::Plugin {
        bytes,
        gzipped: false,
        extra: "",
    }
}

/// A plugin that loads but fails every call: denied as `pool plugin/<name>` with `why`.
fn failing_call(name: &'static str, fixture_name: &str, why: &str) -> HookCase {
    let reason = format!("pool plugin/{{pool}}-hook: pool plugin \"{{pool}}-hook\" failed: {why}");
    HookCase {
        name,
        hook: plugin(fixture(fixture_name)),
        seen: denied(&reason),
    }
}

/// A plugin that does not load: named on the pool, and its runs denied.
fn not_loading(name: &'static str, hook: Hook, source: &str, why: &str) -> HookCase {
    let problem = format!(
        "plugin \"{{pool}}-hook\" (ConfigMap {{pool}}-hook key {source}): {why}; runs are denied until it loads (failurePolicy: Fail)"
    );
    let mut seen = vec![
        Seen::PoolCondition("HooksReady", problem.clone()),
        Seen::PoolEvent("HookLoadFailed", problem),
    ];
    seen.extend(denied(&format!(
        "pool plugin/{{pool}}-hook: pool plugin \"{{pool}}-hook\" failed: is not loaded: {why}"
    )));
    HookCase { name, hook, seen }
}

/// A run denied with `reason` (`hook: message`): in the backend's record and on the Worker.
pub fn denied(reason: &str) -> Vec<Seen> {
    vec![
        Seen::Backend("denied", reason.to_string()),
        Seen::WorkerEvent("RunDenied", format!("run {{pod}} denied: {reason}")),
    ]
}

const POLICY: &str = "{pool}-hook/initialization-policy.rego";

fn policy_denies(name: &'static str, rego: &str, why: &str) -> HookCase {
    HookCase {
        name,
        hook: Hook::Policy(rego.to_string()),
        seen: denied(&format!(
            "pool initialization policy/{POLICY}: pool initialization policy \"{POLICY}\" {why}"
        )),
    }
}

pub fn plugin_cases() -> Vec<HookCase> {
    let abi = "(module (memory (export \"memory\") 1) (func (export \"evaluate\") (param i32) (result i32) i32.const 0))";
    let refusing = r#"(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"valid\":false,\"message\":\"mirrors must not be empty\"}")
  (func (export "workerpool_abi_v1"))
  (func (export "alloc") (param i32) (result i32) i32.const 4096)
  (func (export "validate_settings") (param i32 i32) (result i64) i64.const 0x0000001000000035)
  (func (export "evaluate") (param i32 i32) (result i64) i64.const 0))"#;
    vec![
        not_loading(
            "a module without the ABI's exports",
            plugin(abi.as_bytes().to_vec()),
            "plugin.wasm",
            "the module does not follow the workerpool plugin ABI: missing export `workerpool_abi_v1`; missing export `alloc`; missing export `validate_settings`; export `evaluate` has type (i32) -> (i32) but the ABI needs (i32, i32) -> (i64)",
        ),
        not_loading(
            "bytes that are not a module",
            plugin(b"MZ\x90\x00 not wasm".to_vec()),
            "plugin.wasm",
            "the module is not valid WebAssembly: input bytes aren't valid utf-8",
        ),
        not_loading(
            "an import the host does not provide",
            plugin(fixture("bad-import")),
            "plugin.wasm",
            "the module imports `env::launch_missiles`, which the host does not provide (plugins may import only the WASI preview1 functions listed in docs/plugins.md, from `wasi_snapshot_preview1`)",
        ),
        not_loading(
            "a gzip bomb",
            Hook::Plugin {
                bytes: gzip(&vec![0u8; 64 << 20]),
                gzipped: true,
                extra: "",
            },
            "plugin.wasm.gz",
            "ConfigMap {ns}/{pool}-hook key \"plugin.wasm.gz\": decompresses to more than 16 MiB, the most a plugin module may have (limits.maxModuleMib, Helm value hooks.limits.maxModuleMib): build a smaller module, or raise the limit",
        ),
        not_loading(
            "more memory than a pool plugin may ask for",
            Hook::Plugin {
                bytes: fixture("bad-json"),
                gzipped: false,
                extra: "      memoryLimitMib: 1024\n",
            },
            "plugin.wasm",
            "spec.plugins[0].memoryLimitMib: 1024 MiB is more than a pool plugin may ask for (at most 64 MiB, set by the operator's administrator as limits.maxPluginMemoryLimitMib in its hook configuration, Helm value hooks.limits.maxPluginMemoryLimitMib)",
        ),
        not_loading(
            "settings the plugin refuses",
            plugin(refusing.as_bytes().to_vec()),
            "plugin.wasm",
            "its settings were rejected: mirrors must not be empty",
        ),
        failing_call(
            "a plugin that traps",
            "trap",
            "trapped: wasm `unreachable` instruction executed (stderr: panicked at hostile.rs)",
        ),
        failing_call(
            "a plugin that spins",
            "spin",
            "timed out after 100 ms (raise timeoutMillis if the plugin needs longer, for a pool plugin up to the operator's limits.maxPluginTimeoutMillis)",
        ),
        failing_call(
            "a plugin that eats memory",
            "hog",
            "exceeded its memory limit of 64 MiB (it asked for 64.1 MiB; raise memoryLimitMib if it needs more, for a pool plugin up to the operator's limits.maxPluginMemoryLimitMib)",
        ),
        failing_call(
            "a plugin that answers 16 MiB",
            "huge",
            "returned 16777216 bytes of output, more than the limit of 1048576 bytes",
        ),
        failing_call(
            "a plugin that answers something that is not JSON",
            "bad-json",
            "returned output that is not a valid hook result: expected ident at line 1 column 2",
        ),
    ]
}

/// A policy whose own deny message is `message`.
fn policy_says(name: &'static str, rego: &str, message: String) -> HookCase {
    HookCase {
        name,
        hook: Hook::Policy(rego.to_string()),
        seen: denied(&format!("pool initialization policy/{POLICY}: {message}")),
    }
}

/// A pool whose policy the operator cannot find or read: every run is denied naming the
/// pool field (`problem`).
fn unreadable(problem: &str) -> Vec<Seen> {
    denied(&format!(
        "pool initialization policy/initialization-policy: pool initialization policy \"initialization-policy\" is broken, so every run is denied until it is fixed: WorkerPool {{pool}}: {problem}"
    ))
}

/// regorus's error for `deny[msg {`, with its position.
const COMPILE: &str = "does not compile: does not parse as Rego v0 (set regoVersion to pin the syntax): initialization-policy.rego:2:10: expecting `]` while parsing bracketed reference";

pub fn policy_cases() -> Vec<HookCase> {
    let v1 = |rules: &str| format!("package spacelift\nimport rego.v1\n{rules}\n");
    vec![
        HookCase {
            name: "a policy that does not compile",
            hook: Hook::Policy("package spacelift\ndeny[msg {\n".into()),
            seen: {
                let broken = format!(
                    "policy \"{POLICY}\" (ConfigMap {{pool}}-hook key initialization-policy.rego): {COMPILE}; runs are denied until it is fixed"
                );
                let mut seen = vec![
                    Seen::PoolCondition("HooksReady", broken.clone()),
                    Seen::PoolEvent("HookLoadFailed", broken),
                ];
                seen.extend(denied(&format!("pool initialization policy/{POLICY}: pool initialization policy \"{POLICY}\" is broken, so every run is denied until it is fixed: {COMPILE}")));
                seen
            },
        },
        policy_denies(
            "a policy that asks a builtin for 7 PB",
            &v1("deny contains \"big\" if count(numbers.range(1, 300000000000000)) > 0"),
            "failed: exceeded its memory limit of 32 MiB (it asked for 7200000000000000 bytes more with {*} in use); raise limits.maxPolicyMemoryMib (Helm value hooks.limits.maxPolicyMemoryMib) if it needs more, or fix the policy; the run is denied",
        ),
        policy_denies(
            "a policy that writes a gigabyte",
            &v1("deny contains msg if msg := sprintf(\"%0999999999d\", [1])"),
            "failed: exceeded its memory limit of 32 MiB (it asked for 999999998 bytes more with {*} in use); raise limits.maxPolicyMemoryMib (Helm value hooks.limits.maxPolicyMemoryMib) if it needs more, or fix the policy; the run is denied",
        ),
        policy_denies(
            "a policy that never ends",
            // A billion steps over three small ranges: time, not memory (one range of 10^8 numbers
            // would hit the memory limit first).
            &v1(
                "deny contains \"slow\" if { some i in numbers.range(1, 1000); some j in numbers.range(1, 1000); some k in numbers.range(1, 1000); i + j + k < 0 }",
            ),
            "failed: evaluation took longer than 100 ms (the policy time limit); the run is denied",
        ),
        policy_denies(
            "a deny that is a number",
            &v1("deny := 5"),
            "failed: evaluation failed: `deny` must be a set of messages, got 5; the run is denied",
        ),
        policy_denies(
            "a deny that is an object",
            &v1("deny := {\"reason\": \"no\"}"),
            "failed: evaluation failed: `deny` must be a set of messages, got {\n  \"reason\": \"no\"\n}; the run is denied",
        ),
        // A deny message that is not a string still denies, as its JSON text.
        policy_says(
            "deny messages that are not strings",
            &v1("deny contains 42 if true"),
            "42".into(),
        ),
        // Cut to 1000 bytes in the report, so that every report fits the broker's payload
        // cap; the event's note is cut to Kubernetes' 1 KB (ending in "…").
        HookCase {
            name: "a 300 KB deny reason",
            hook: Hook::Policy(v1(
                "deny contains msg if msg := sprintf(\"%0300000d\", [1])",
            )),
            seen: vec![
                Seen::Backend(
                    "denied",
                    format!(
                        "pool initialization policy/{POLICY}: {}... (299003 more bytes)",
                        "0".repeat(997)
                    ),
                ),
                Seen::WorkerEvent(
                    "RunDenied",
                    format!(
                        "run {{pod}} denied: pool initialization policy/{POLICY}: 0000000000{{*}}0…"
                    ),
                ),
            ],
        },
        HookCase {
            name: "a policy variable set from a ConfigMap, not a path",
            hook: Hook::Spec {
                spec: "  pod:\n    initContainer:\n      env:\n        - name: SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY\n          valueFrom: {configMapKeyRef: {name: elsewhere, key: path}}\n",
                policy: None,
            },
            seen: unreadable(
                "spec.pod.initContainer.env[SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY]: must be a literal `value`, not `valueFrom`, so the operator can read the policy before the Pod exists",
            ),
        },
        HookCase {
            name: "a policy path no mount covers",
            hook: Hook::Spec {
                spec: "  pod:\n    initContainer:\n      env:\n        - name: SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY\n          value: /opt/spacelift/policies/nowhere.rego\n",
                policy: None,
            },
            seen: unreadable(
                "spec.pod.initContainer.env[SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY]: points at /opt/spacelift/policies/nowhere.rego, but no volume in spec.pod.initContainer.volumeMounts is mounted there: mount the policy's ConfigMap volume",
            ),
        },
        HookCase {
            name: "a policy on a volume that is not a ConfigMap",
            hook: Hook::Spec {
                spec: "  pod:\n    volumes: [{name: p, emptyDir: {}}]\n    initContainer:\n      volumeMounts: [{name: p, mountPath: /opt/spacelift/policies/initialization}]\n      env:\n        - name: SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY\n          value: /opt/spacelift/policies/initialization/initialization-policy.rego\n",
                policy: None,
            },
            seen: unreadable(
                "spec.pod.volumes[p]: /opt/spacelift/policies/initialization/initialization-policy.rego is not a ConfigMap key: the operator reads initialization policies only from configMap volumes (or projected configMap sources with items)",
            ),
        },
    ]
}

/// The case's ConfigMap and pool (`<prefix>-<i>`, hooks from ConfigMap `<pool>-hook`).
pub async fn apply(cat: &Catalogue, pool: &str, hook: &Hook) -> anyhow::Result<()> {
    let config_maps: Api<ConfigMap> = cat.stack.ns.api();
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some(format!("{pool}-hook"));
    let extra = match hook {
        Hook::Plugin {
            bytes,
            gzipped,
            extra,
        } => {
            let key = if *gzipped {
                "plugin.wasm.gz"
            } else {
                "plugin.wasm"
            };
            config_map.binary_data = Some(BTreeMap::from([(
                key.to_string(),
                ByteString(bytes.clone()),
            )]));
            format!("  plugins:\n    - configMap: {pool}-hook\n      key: {key}\n{extra}")
        }
        Hook::Policy(rego) => {
            config_map.data = Some(BTreeMap::from([(
                "initialization-policy.rego".to_string(),
                rego.clone(),
            )]));
            initialization_policy_yaml(&format!("{pool}-hook"))
        }
        Hook::Spec { spec, policy } => {
            if let Some(rego) = policy {
                config_map.data = Some(BTreeMap::from([(
                    "initialization-policy.rego".to_string(),
                    rego.clone(),
                )]));
            }
            spec.to_string()
        }
    };
    config_maps
        .create(&PostParams::default(), &config_map)
        .await?;
    cat.stack.create_credentials(pool, pool)?;
    cat.stack.apply(&pool_yaml(pool, pool, 1, &extra))?;
    Ok(())
}

/// Applies every case, runs one run on each pool, and checks where each shows.
pub async fn run_cases(cat: &Catalogue, prefix: &str, cases: &[HookCase]) -> anyhow::Result<()> {
    for (i, case) in cases.iter().enumerate() {
        apply(cat, &format!("{prefix}-{i}"), &case.hook).await?;
    }
    let mut runs = Vec::new();
    for i in 0..cases.len() {
        let pool = format!("{prefix}-{i}");
        cat.stack.wait_registered(&pool, 1).await?;
        runs.push(cat.submit(&pool).await?);
    }
    let mut failures = Vec::new();
    for (i, (case, run)) in cases.iter().zip(&runs).enumerate() {
        let pool = format!("{prefix}-{i}");
        for seen in &case.seen {
            if let Err(err) = cat.check(&pool, run, seen).await {
                failures.push(format!("{}: {err:#}", case.name));
            }
        }
    }
    verdict(prefix, cases.len(), failures)
}

#[tokio::test]
async fn every_bad_plugin_is_named_and_denies_only_its_pools_runs() -> anyhow::Result<()> {
    let cat = Catalogue::new("cat-plugins", &[]).await?;
    let cases = plugin_cases();
    cat.alongside(run_cases(&cat, "plugin", &cases)).await?;
    cat.end().await
}

#[tokio::test]
async fn every_bad_policy_is_named_and_denies_only_its_pools_runs() -> anyhow::Result<()> {
    let cat = Catalogue::new("cat-policies", &[]).await?;
    let cases = policy_cases();
    cat.alongside(run_cases(&cat, "policy", &cases)).await?;
    cat.end().await
}
