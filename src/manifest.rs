//! Reading WorkerPool manifests offline (for `render` and tests) as strictly as the apiserver
//! does: unknown fields are refused with their path and a suggestion, type errors name the field,
//! and the CRD's validation rules are applied.

use std::path::Path;
use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::crd::WorkerPool;

/// Why a manifest cannot be used. Every message names the file and the field.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: {message}")]
    Document { file: String, message: String },
    #[error("{file}: {path}: {message}")]
    Field {
        file: String,
        path: String,
        message: String,
    },
}

/// The WorkerPool CRD's schema, with the fields every object has. Generating it is costly, so
/// it is built once.
static WORKERPOOL_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let mut schema = serde_json::to_value(
        WorkerPool::crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.clone()),
    )
    .unwrap_or_default();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for field in ["apiVersion", "kind", "metadata"] {
            properties.insert(field.into(), serde_json::json!({}));
        }
    }
    schema
});

/// Reads the single WorkerPool document of a YAML file (other kinds in it are skipped).
pub fn load_workerpool(path: &Path) -> Result<WorkerPool, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
        file: file.clone(),
        error,
    })?;
    let documents = parse_documents(&file, &text)?;
    let mut pools = documents
        .into_iter()
        .filter(|doc| doc.get("kind").and_then(Value::as_str) == Some("WorkerPool"));
    let pool = pools.next().ok_or_else(|| ManifestError::Document {
        file: file.clone(),
        message: "no document of kind WorkerPool".into(),
    })?;
    if pools.next().is_some() {
        return Err(ManifestError::Document {
            file,
            message: "more than one WorkerPool: give render a file with exactly one".into(),
        });
    }
    workerpool_from_value(&file, pool)
}

/// Splits a multi-document YAML text into JSON values, skipping empty documents.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| ManifestError::Yaml {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Turns one document into a WorkerPool, refusing what the apiserver would refuse.
pub fn workerpool_from_value(file: &str, document: Value) -> Result<WorkerPool, ManifestError> {
    let api_version = document.get("apiVersion").and_then(Value::as_str);
    if api_version != Some("workers.spacelift.io/v1beta1") {
        return Err(ManifestError::Field {
            file: file.to_string(),
            path: "apiVersion".into(),
            message: match api_version {
                Some(v) => format!("is {v:?}, expected \"workers.spacelift.io/v1beta1\""),
                None => "is missing, expected \"workers.spacelift.io/v1beta1\"".into(),
            },
        });
    }
    let schema = &*WORKERPOOL_SCHEMA;
    let field_error = |path: String, message: String| ManifestError::Field {
        file: file.to_string(),
        path,
        message,
    };
    if let Some((path, message)) = schema_errors(&document, schema, "").into_iter().next() {
        return Err(field_error(path, message));
    }
    let pool: WorkerPool = deserialize_at_path(document).map_err(|(p, m)| field_error(p, m))?;
    validate(&pool).map_err(|(p, m)| field_error(p.into(), m))?;
    Ok(pool)
}

/// Deserializes with the path of the failing field, e.g. `spec.poolSize`.
pub fn deserialize_at_path<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}

/// A path of [`deserialize_at_path`] as a message names it: `(top level)` for the document
/// itself (serde_path_to_error's `.`).
pub fn named_path(path: String) -> String {
    if path == "." {
        "(top level)".into()
    } else {
        path
    }
}

/// The rules the CRD schema enforces in the apiserver, for offline use.
fn validate(pool: &WorkerPool) -> Result<(), (&'static str, String)> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    if name.len() > crate::crd::MAX_POOL_NAME {
        let message = crate::crd::POOL_NAME_MESSAGE;
        let message = message.strip_prefix("metadata.name: ").unwrap_or(message);
        return Err((
            "metadata.name",
            format!("{message} (this one has {})", name.len()),
        ));
    }
    for (path, ttl) in [
        (
            "spec.successfulPodsHistoryTTL",
            &pool.spec.successful_pods_history_ttl,
        ),
        (
            "spec.failedPodsHistoryTTL",
            &pool.spec.failed_pods_history_ttl,
        ),
    ] {
        if ttl.as_ref().is_some_and(|ttl| ttl.is_negative()) {
            return Err((path, "must not be negative".into()));
        }
    }
    if pool.spec.token.is_some() != pool.spec.private_key.is_some() {
        let (set, unset) = if pool.spec.token.is_some() {
            ("token", "privateKey")
        } else {
            ("privateKey", "token")
        };
        return Err((
            "spec",
            format!(
                "{set} is set but {unset} is not: token and privateKey must be set together: both point at keys of the Secret created for the pool"
            ),
        ));
    }
    // What the apiserver's CEL rules check, and what the operator checks when it reads the
    // spec (cron expressions, time zones): refused here too, so `render` says it first.
    if let Some(autoscaling) = &pool.spec.autoscaling
        && let Err(problem) = crate::controller::autoscale::settings::settings(autoscaling)
    {
        let message = problem.to_string();
        let message = message
            .strip_prefix("spec.autoscaling.")
            .unwrap_or(&message);
        return Err(("spec.autoscaling", message.to_string()));
    }
    let init = pool
        .spec
        .pod
        .as_ref()
        .and_then(|p| p.init_container.as_ref());
    if init.is_some_and(|init| init.lifecycle.is_some()) {
        return Err((
            "spec.pod.initContainer.lifecycle",
            "lifecycle hooks are not allowed on the init container (Kubernetes refuses them on init containers): set them on workerContainer or grpcServerContainer".into(),
        ));
    }
    Ok(())
}

/// Every field of `value` the schema does not know, and every value outside the schema's
/// `enum` or `minimum`, as `(path, message)`.
fn schema_errors(value: &Value, schema: &Value, path: &str) -> Vec<(String, String)> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return Vec::new();
    }
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                map.iter()
                    .flat_map(|(key, child)| match properties.get(key) {
                        Some(child_schema) => schema_errors(child, child_schema, &join(key)),
                        None => vec![(join(key), unknown_field_message(key, properties.keys()))],
                    })
                    .collect()
            } else if let Some(values) = schema.get("additionalProperties") {
                map.iter()
                    .flat_map(|(key, child)| schema_errors(child, values, &join(key)))
                    .collect()
            } else {
                Vec::new()
            }
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| schema_errors(item, item_schema, &format!("{path}[{i}]")))
                .collect(),
            None => Vec::new(),
        },
        scalar => scalar_error(scalar, schema)
            .map(|message| (path.to_string(), message))
            .into_iter()
            .collect(),
    }
}

/// A scalar outside the schema's `enum` or below its `minimum`.
fn scalar_error(value: &Value, schema: &Value) -> Option<String> {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !value.is_null()
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Some(format!(
            "must be one of {}, got {value}",
            allowed.join(", ")
        ));
    }
    let minimum = schema.get("minimum").and_then(Value::as_f64)?;
    (value.as_f64()? < minimum).then(|| format!("must be {minimum} or more, got {value}"))
}

fn unknown_field_message<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> String {
    let closest = known
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                k,
            )
        })
        .min();
    match closest {
        Some((distance, suggestion)) if distance <= 3 => {
            format!("unknown field {key:?}, did you mean {suggestion:?}?")
        }
        _ => format!("unknown field {key:?}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(current)
            };
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> Result<WorkerPool, String> {
        let docs = parse_documents("pool.yaml", yaml).map_err(|e| e.to_string())?;
        let doc = docs.into_iter().next().ok_or("no document")?;
        workerpool_from_value("pool.yaml", doc).map_err(|e| e.to_string())
    }

    const HEADER: &str =
        "apiVersion: workers.spacelift.io/v1beta1\nkind: WorkerPool\nmetadata:\n  name: p\n";

    #[test]
    fn misspelled_fields_are_refused_with_their_path_and_a_suggestion() {
        let cases = [
            (
                "spec:\n  poolsize: 2\n",
                "pool.yaml: spec.poolsize: unknown field \"poolsize\", did you mean \"poolSize\"?",
            ),
            (
                "spec:\n  pod:\n    initContainer:\n      resource: {}\n",
                "pool.yaml: spec.pod.initContainer.resource: unknown field \"resource\", did you mean \"resources\"?",
            ),
            (
                "spec:\n  pod:\n    affinity:\n      nodeAfinity: {}\n",
                "pool.yaml: spec.pod.affinity.nodeAfinity: unknown field \"nodeAfinity\", did you mean \"nodeAffinity\"?",
            ),
            (
                "spec:\n  pod:\n    additionalSidecarContainers:\n      - name: redis\n        imag: redis\n",
                "pool.yaml: spec.pod.additionalSidecarContainers[0].imag: unknown field \"imag\", did you mean \"image\"?",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(pool(&format!("{HEADER}{spec}")).unwrap_err(), want);
        }
    }

    #[test]
    fn bad_autoscaling_is_refused_offline_naming_the_field() {
        let err = pool(&format!(
            "{HEADER}spec:\n  autoscaling:\n    maxPoolSize: 5\n    minIdle: 6\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with(
                "pool.yaml: spec.autoscaling: minIdle: 6 must not exceed maxPoolSize (5)"
            ),
            "{err}"
        );
        let err = pool(&format!(
            "{HEADER}spec:\n  autoscaling:\n    maxPoolSize: 5\n    windows:\n      - {{start: \"0 8 * * 1-5\", end: \"0 18 * * 1-5\", timeZone: Europe/Berlyn, minPoolSize: 2}}\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("pool.yaml: spec.autoscaling: windows[0].timeZone: \"Europe/Berlyn\" is not an IANA time zone"),
            "{err}"
        );
        let ok = pool(&format!(
            "{HEADER}spec:\n  autoscaling:\n    maxPoolSize: 5\n    scaleDownDelay: 30s\n"
        ))
        .expect("valid");
        assert_eq!(ok.spec.autoscaling.map(|a| a.max_pool_size), Some(5));
    }

    #[test]
    fn type_errors_and_rules_name_the_field() {
        let err = pool(&format!("{HEADER}spec:\n  poolSize: two\n")).unwrap_err();
        assert!(
            err.starts_with("pool.yaml: spec.poolSize: invalid type: string \"two\""),
            "{err}"
        );
        let err = pool(&format!("{HEADER}spec:\n  poolSize: -1\n")).unwrap_err();
        assert_eq!(err, "pool.yaml: spec.poolSize: must be 0 or more, got -1");
        let err = pool(&format!(
            "{HEADER}spec:\n  token:\n    secretKeyRef: {{name: s, key: token}}\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("pool.yaml: spec: token is set but privateKey is not"),
            "{err}"
        );
        let err = pool("apiVersion: v1\nkind: WorkerPool\n").unwrap_err();
        assert_eq!(
            err,
            "pool.yaml: apiVersion: is \"v1\", expected \"workers.spacelift.io/v1beta1\""
        );
    }

    #[test]
    fn values_the_schema_refuses_are_refused_offline_too() {
        let cases = [
            (
                "pod:\n    workerContainer:\n      imagePullPolicy: Sometimes\n",
                "spec.pod.workerContainer.imagePullPolicy: must be one of \"Always\", \"IfNotPresent\", \"Never\", got \"Sometimes\"",
            ),
            (
                "pod:\n    activeDeadlineSeconds: 0\n",
                "spec.pod.activeDeadlineSeconds: must be 1 or more, got 0",
            ),
            (
                "successfulPodsHistoryTTL: 1d\n",
                "spec.successfulPodsHistoryTTL: invalid unit",
            ),
            (
                "failedPodsHistoryTTL: -1h\n",
                "spec.failedPodsHistoryTTL: must not be negative",
            ),
            (
                "pod:\n    initContainer:\n      lifecycle: {preStop: {exec: {command: [\"true\"]}}}\n",
                "spec.pod.initContainer.lifecycle: lifecycle hooks are not allowed on the init container",
            ),
        ];
        for (spec, want) in cases {
            let err = pool(&format!("{HEADER}spec:\n  {spec}")).unwrap_err();
            assert!(
                err.starts_with(&format!("pool.yaml: {want}")),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn a_pool_name_too_long_for_its_workers_is_refused_offline_as_by_the_apiserver() {
        let name = "p".repeat(crate::crd::MAX_POOL_NAME + 1);
        let yaml = HEADER.replace("name: p", &format!("name: {name}"));
        let err = pool(&format!("{yaml}spec: {{}}\n")).unwrap_err();
        assert_eq!(
            err,
            "pool.yaml: metadata.name: a WorkerPool name is at most 209 characters: its Workers are named <pool>-<worker ULID> (27 more) and events about them add 17, within Kubernetes' 253; choose a shorter name (this one has 210)"
        );
        let longest = "p".repeat(crate::crd::MAX_POOL_NAME);
        let yaml = HEADER.replace("name: p", &format!("name: {longest}"));
        assert!(pool(&format!("{yaml}spec: {{}}\n")).is_ok());
    }

    #[test]
    fn nulls_read_as_the_default() {
        let pool = pool(&format!(
            "{HEADER}spec:\n  poolSize: null\n  plugins: null\n"
        ))
        .unwrap();
        assert_eq!(pool.spec.pool_size, 1);
        assert!(pool.spec.plugins.is_empty());
    }

    #[test]
    fn pool_size_defaults_to_one() {
        assert_eq!(
            pool(&format!("{HEADER}spec: {{}}\n"))
                .unwrap()
                .spec
                .pool_size,
            1
        );
    }

    fn seed_fixtures(dir: &str) -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture directory")
            .map(|entry| entry.expect("fixture").path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_seed_workerpool_deserializes() {
        let files = seed_fixtures("tests/fixtures/seed");
        let pools: Vec<WorkerPool> = files
            .iter()
            .filter(|f| !f.ends_with("initialization-policies-configmap.yaml"))
            .map(|f| load_workerpool(f).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(pools.len(), 11, "one WorkerPool per seed example");
        let configuration = load_workerpool(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed/configuration.yaml"),
        )
        .unwrap();
        let pod = configuration.spec.pod.expect("pod settings");
        assert_eq!(configuration.spec.pool_size, 2);
        assert_eq!(
            configuration.spec.allowed_runner_image_hosts,
            Some(vec!["docker.io".into(), "some.private.registry".into()])
        );
        assert_eq!(pod.launcher_image.as_deref(), Some(""));
        assert_eq!(pod.workspace_volume, None);
        assert_eq!(pod.additional_sidecar_containers.unwrap()[0].name, "redis");
    }

    #[test]
    fn the_seeds_broken_examples_get_errors_that_point_at_the_problem() {
        let errors: Vec<String> = seed_fixtures("tests/fixtures/seed/invalid")
            .iter()
            .map(|f| load_workerpool(f).unwrap_err().to_string())
            .collect();
        assert_eq!(errors.len(), 2);
        // "spec:\n  ...\n  keepSuccessfulPods: true" is not YAML: the key on line 9.
        assert!(
            errors[0].ends_with(
                "inspecting-successful-run-pods.yaml: not valid YAML: mapping values are not allowed in this context at line 9 column 21"
            ),
            "{}",
            errors[0]
        );
        // The seed's VCS agents example lacks a closing quote: the value on line 22.
        assert!(
            errors[1].ends_with(
                "vcs-agents.yaml: not valid YAML: found unexpected end of stream at line 23 column 1, while scanning a quoted scalar at line 22 column 18"
            ),
            "{}",
            errors[1]
        );
    }
}
