//! The hook values: the examples, plugins and policies shipped as chart files, and the values
//! the chart refuses, checked against the operator's own parser of its --hook-config file.

use serde_json::json;
use workerpool_operator::hooks::HookConfig;
use workerpool_operator::hooks::registry::cluster_config_maps;

use crate::chart::*;
use crate::support;

#[test]
fn typos_and_bad_values_are_refused() -> anyhow::Result<()> {
    let err = render_error(&["--set", "controllerManager.namespace={a}"])?;
    assert!(
        err.contains("additional properties 'namespace' not allowed"),
        "{err}"
    );
    let err = render_error(&["--set", "hooks.plugins[0].name=x"])?;
    assert!(err.contains("hooks.plugins[0] (x): set configMap"), "{err}");
    let err = render_error(&[
        "--set",
        "hooks.plugins[0].name=x",
        "--set",
        "hooks.plugins[0].configMap=a",
        "--set",
        "hooks.plugins[0].file=b",
    ])?;
    assert!(err.contains("set configMap or file, not both"), "{err}");
    let err = render_error(&[
        "--set",
        "hooks.plugins[0].name=x",
        "--set",
        "hooks.plugins[0].file=files/none.wasm",
    ])?;
    assert!(
        err.contains(r#"file "files/none.wasm" is not in the chart"#),
        "{err}"
    );
    let err = render_error(&[
        "--set",
        "hooks.plugins[0].name=x",
        "--set",
        "hooks.plugins[0].configMap=a",
        "--set",
        "hooks.plugins[1].name=x",
        "--set",
        "hooks.plugins[1].configMap=b",
    ])?;
    assert!(err.contains(r#"the name "x" is used twice"#), "{err}");
    let err = render_error(&[
        "--set",
        "hooks.plugins[0].name=x",
        "--set",
        "hooks.plugins[0].configMap=a",
        "--set",
        "hooks.plugins[0].failurePolicy=Sometimes",
    ])?;
    assert!(err.contains("failurePolicy"), "{err}");
    let err = render_error(&[
        "--set",
        "hooks.policies[0].name=p",
        "--set",
        "hooks.policies[0].configMap=a",
    ])?;
    assert!(err.contains("configMap needs key"), "{err}");
    let err = render_error(&["--set", "hooks.policies[0].name=p"])?;
    assert!(err.contains("set exactly one of rego"), "{err}");
    let err = render_error(&[
        "--set",
        "pdb.enabled=true",
        "--set",
        "pdb.minAvailable=1",
        "--set",
        "pdb.maxUnavailable=0",
    ])?;
    assert!(
        err.contains("pdb: set minAvailable or maxUnavailable, not both"),
        "{err}"
    );
    Ok(())
}

#[test]
fn hook_limit_defaults_above_their_pool_plugin_caps_are_refused() -> anyhow::Result<()> {
    let err = render_error(&["--set", "hooks.limits.pluginMemoryLimitMib=128"])?;
    assert!(
        err.contains(
            "hooks.limits.pluginMemoryLimitMib: 128 is more than \
             hooks.limits.maxPluginMemoryLimitMib (64), the most a pool plugin may ask for"
        ),
        "{err}"
    );
    let err = render_error(&["--set", "hooks.limits.maxPluginTimeoutMillis=50"])?;
    assert!(
        err.contains(
            "hooks.limits.pluginTimeoutMillis: 100 is more than \
             hooks.limits.maxPluginTimeoutMillis (50)"
        ),
        "{err}"
    );
    // Raised together, the operator takes them.
    let r = render(&[
        "--set",
        "hooks.limits.pluginMemoryLimitMib=96",
        "--set",
        "hooks.limits.maxPluginMemoryLimitMib=96",
        "--set",
        "hooks.limits.maxPluginTimeoutMillis=2000",
    ])?;
    let config = HookConfig::parse(&r.hook_config()?, "hooks.yaml")?;
    let caps = config.limits.pool_plugin_caps();
    assert_eq!((caps.timeout_millis, caps.memory_limit_mib), (2000, 96));
    Ok(())
}

#[test]
fn the_examples_render_the_operators_hook_config_format() -> anyhow::Result<()> {
    let examples = examples_values().display().to_string();
    let r = render(&["-f", &examples])?;
    let config = HookConfig::parse(&r.hook_config()?, "hooks.yaml")?;
    let plugins: Vec<&str> = config.plugins.iter().map(|p| p.display_name()).collect();
    assert_eq!(
        plugins,
        [
            "label-injector",
            "registry-mirror",
            "resource-guard",
            "deny-latest"
        ]
    );
    assert_eq!(config.plugins[1].timeout_millis, Some(200));
    assert_eq!(config.limits.policy_timeout_millis, 100);
    // The example policies are the files of policies/, from the ConfigMap the script makes.
    for policy in &config.policies {
        assert_eq!(policy.config_map.as_deref(), Some("example-policies"));
        let key = policy.key.as_deref().unwrap();
        assert!(
            support::repo_root().join("policies").join(key).is_file(),
            "policies/{key}"
        );
    }
    assert!(!r.has("ConfigMap", "-policies"), "{}", r.summary());
    let wanted = cluster_config_maps(&config);
    assert!(wanted.contains("example-plugin-deny-latest"), "{wanted:?}");
    Ok(())
}

#[test]
fn plugins_and_policies_shipped_as_chart_files_become_configmaps() -> anyhow::Result<()> {
    let chart = ChartCopy::new()?;
    // Any bytes do for rendering; a gzip header makes it look like what users ship.
    let module: Vec<u8> = [0x1f, 0x8b, 8, 0]
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(5000))
        .collect();
    chart.write("files/plugins/guard.wasm.gz", &module)?;
    chart.write("files/policies/no-root.rego", "package spacelift\n\ndeny contains \"root\" if input.pod.spec.securityContext.runAsUser == 0\n")?;
    let values = r#"
hooks:
  plugins:
    - name: guard
      file: files/plugins/guard.wasm.gz
      settings: {max: {cpu: "2"}}
      memoryLimitMib: 32
    - name: mirror
      configMap: shared-mirror
  policies:
    - name: no-root
      file: files/policies/no-root.rego
    - name: existing
      configMap: shared-policies
      key: existing.rego
      regoVersion: v0
"#;
    chart.write("test-values.yaml", values)?;
    let yaml = template_yaml(
        chart.path(),
        "wpo",
        "workerpool-system",
        &[
            "-f".into(),
            chart.path().join("test-values.yaml").display().to_string(),
        ],
    )?;
    let r = Rendering::parse(&yaml)?;
    let config = HookConfig::parse(&r.hook_config()?, "hooks.yaml")?;
    assert_eq!(
        config.plugins[0].config_map,
        "wpo-workerpool-operator-plugin-guard"
    );
    assert_eq!(config.plugins[0].key.as_deref(), Some("guard.wasm.gz"));
    assert_eq!(config.plugins[0].memory_limit_mib, Some(32));
    assert_eq!(
        config.plugins[0].settings,
        Some(json!({"max": {"cpu": "2"}}))
    );
    assert_eq!(config.plugins[1].config_map, "shared-mirror");
    assert_eq!(config.plugins[1].key, None);
    assert_eq!(
        config.policies[1].config_map.as_deref(),
        Some("shared-policies")
    );
    // The module is in binaryData, byte for byte.
    let cm = r.get("ConfigMap", "-plugin-guard")?;
    let encoded = cm["binaryData"]["guard.wasm.gz"].as_str().unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(encoded)?,
        module
    );
    let policies = r.get("ConfigMap", "-policies")?;
    assert_eq!(
        policies["data"]["no-root.rego"],
        chart.read("files/policies/no-root.rego")?
    );
    assert!(policies["data"].get("existing.rego").is_none());
    // Every ConfigMap the configuration names is either rendered or the user's own.
    for name in cluster_config_maps(&config) {
        assert!(
            r.has("ConfigMap", &name) || name.starts_with("shared-"),
            "{name}"
        );
    }
    Ok(())
}
