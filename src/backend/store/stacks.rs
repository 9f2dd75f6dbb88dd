//! Stacks (a name, a pool, a source, a tool, environment) and the tool binaries runs install.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension as _, Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, db, event, now};
use crate::backend::BackendError;
use crate::backend::blobs::BlobRef;

/// `POST /api/stacks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateStack {
    /// The stack's name (a Kubernetes object name).
    pub name: String,
    /// The pool whose workers run it (name or ULID).
    pub pool: String,
    /// The digest of a source uploaded with `POST /api/sources`.
    pub source: String,
    /// The IaC tool, e.g. `tofu`.
    pub tool: String,
    /// Its version, e.g. `1.12.6`.
    pub tool_version: String,
    /// Plain variables for the stage's commands.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The runner image; the pool's `defaultRunnerImage` applies when absent.
    #[serde(default)]
    pub runner_image: Option<String>,
    /// Whether the backend keeps the stack's state (OpenTofu's `http` backend); default yes.
    #[serde(default)]
    pub managed_state: Option<bool>,
}

/// `PATCH /api/stacks/{name}`: what is given changes; `environment` replaces the whole set;
/// an empty `runnerImage` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStack {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub tool_version: Option<String>,
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub runner_image: Option<String>,
    #[serde(default)]
    pub managed_state: Option<bool>,
}

/// A stack as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackView {
    pub name: String,
    pub pool_id: String,
    pub source: launcher_api::Artifact,
    pub tool: String,
    pub tool_version: String,
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_image: Option<String>,
    pub managed_state: bool,
    /// The current state version (`stack state NAME`), none before the first write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<i64>,
    /// OpenTofu's lock info while the state is locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// A stored tool binary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub added_at: String,
}

const STACK_COLUMNS: &str = "name, pool_id, source_sha256, source_size, tool_name, tool_version,
    environment, runner_image, managed_state, state_version, lock_info, created_at, updated_at";

fn stack_row(r: &Row<'_>) -> rusqlite::Result<StackView> {
    let environment: String = r.get(6)?;
    let lock: Option<String> = r.get(10)?;
    Ok(StackView {
        name: r.get(0)?,
        pool_id: r.get(1)?,
        source: launcher_api::Artifact {
            sha256: r.get(2)?,
            size: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
        },
        tool: r.get(4)?,
        tool_version: r.get(5)?,
        environment: serde_json::from_str(&environment).unwrap_or_default(),
        runner_image: r.get(7)?,
        managed_state: r.get(8)?,
        state_version: r.get(9)?,
        lock: lock.and_then(|l| serde_json::from_str(&l).ok()),
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

fn input(message: String) -> BackendError {
    BackendError::Input(message)
}

/// A stack name is a Kubernetes object name, so it can label things in the cluster.
fn check_stack_name(name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(input(format!(
            "stack name {name:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        )))
    }
}

/// Tool names and versions become path segments in the run Pod's binaries cache
/// (`<cache>/<name>/<version>/<name>`), so no `/`, no `..`, nothing a shell would read.
pub fn check_tool(name: &str, version: &str) -> Result<(), BackendError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(input(format!(
            "tool name {name:?} must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter (e.g. tofu)"
        )));
    }
    let version_ok = !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'));
    if !version_ok {
        return Err(input(format!(
            "tool version {version:?} must be 1-64 letters, digits, '.', '-', '+' or '_', starting with a letter or digit (e.g. 1.12.6)"
        )));
    }
    Ok(())
}

/// The most variables a stack may have, and the longest value.
const MAX_VARIABLES: usize = 256;
const MAX_VALUE_LEN: usize = 32 * 1024;

fn check_environment(environment: &BTreeMap<String, String>) -> Result<(), BackendError> {
    if environment.len() > MAX_VARIABLES {
        return Err(input(format!(
            "environment: {} variables, at most {MAX_VARIABLES}",
            environment.len()
        )));
    }
    for (name, value) in environment {
        let ok = !name.is_empty()
            && name.len() <= 256
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(input(format!(
                "environment: {name:?} is not a variable name (letters, digits and '_', not starting with a digit)"
            )));
        }
        if value.len() > MAX_VALUE_LEN || value.contains('\0') {
            return Err(input(format!(
                "environment: the value of {name} must be at most {MAX_VALUE_LEN} bytes, without NUL"
            )));
        }
    }
    Ok(())
}

fn check_runner_image(image: &Option<String>) -> Result<(), BackendError> {
    match image {
        Some(image) if image.is_empty() || image.chars().any(char::is_whitespace) => Err(input(
            format!("runnerImage {image:?} must be an image reference without spaces"),
        )),
        _ => Ok(()),
    }
}

impl Store {
    /// Creates a stack whose source is the stored blob `source`.
    pub fn create_stack(
        &self,
        request: &CreateStack,
        source: &BlobRef,
    ) -> Result<StackView, BackendError> {
        check_stack_name(&request.name)?;
        check_tool(&request.tool, &request.tool_version)?;
        check_environment(&request.environment)?;
        check_runner_image(&request.runner_image)?;
        let pool = self.pool(&request.pool)?;
        if self.stack(&request.name)?.is_some() {
            return Err(BackendError::Conflict(format!(
                "a stack named {:?} already exists: change it with `stack update`",
                request.name
            )));
        }
        let environment =
            serde_json::to_string(&request.environment).map_err(|err| input(err.to_string()))?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let at = now();
            tx.execute(
                "INSERT INTO stacks (name, pool_id, source_sha256, source_size, tool_name,
                   tool_version, environment, runner_image, managed_state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                params![
                    request.name,
                    pool.id,
                    source.sha256,
                    source.size as i64,
                    request.tool,
                    request.tool_version,
                    environment,
                    request.runner_image,
                    request.managed_state.unwrap_or(true),
                    at,
                ],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&pool.id),
                None,
                None,
                "stack.created",
                &serde_json::json!({"stack": request.name, "source": source.sha256}),
            )?;
            tx.commit().map_err(db)
        })?;
        self.stack(&request.name)?
            .ok_or_else(|| BackendError::Store(format!("stack {} vanished", request.name)))
    }

    /// Changes a stack; runs already triggered keep the source they snapshotted.
    pub fn update_stack(
        &self,
        name: &str,
        request: &UpdateStack,
        source: Option<&BlobRef>,
    ) -> Result<StackView, BackendError> {
        let current = self
            .stack(name)?
            .ok_or_else(|| BackendError::NotFound(format!("no stack named {name:?}")))?;
        let tool = request.tool.clone().unwrap_or(current.tool);
        let version = request.tool_version.clone().unwrap_or(current.tool_version);
        check_tool(&tool, &version)?;
        let environment = request.environment.clone().unwrap_or(current.environment);
        check_environment(&environment)?;
        let runner_image = match &request.runner_image {
            Some(image) if image.is_empty() => None,
            Some(image) => Some(image.clone()),
            None => current.runner_image,
        };
        check_runner_image(&runner_image)?;
        let (sha256, size) = match source {
            Some(blob) => (blob.sha256.clone(), blob.size),
            None => (current.source.sha256, current.source.size),
        };
        let managed = request.managed_state.unwrap_or(current.managed_state);
        let environment =
            serde_json::to_string(&environment).map_err(|err| input(err.to_string()))?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "UPDATE stacks SET source_sha256 = ?2, source_size = ?3, tool_name = ?4,
                   tool_version = ?5, environment = ?6, runner_image = ?7, managed_state = ?8,
                   updated_at = ?9
                 WHERE name = ?1",
                params![
                    name,
                    sha256,
                    size as i64,
                    tool,
                    version,
                    environment,
                    runner_image,
                    managed,
                    now()
                ],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&current.pool_id),
                None,
                None,
                "stack.updated",
                &serde_json::json!({"stack": name, "source": sha256}),
            )?;
            tx.commit().map_err(db)
        })?;
        self.stack(name)?
            .ok_or_else(|| BackendError::Store(format!("stack {name} vanished")))
    }

    /// One stack.
    pub fn stack(&self, name: &str) -> Result<Option<StackView>, BackendError> {
        self.with(|conn| {
            conn.query_row(
                &format!("SELECT {STACK_COLUMNS} FROM stacks WHERE name = ?1"),
                [name],
                stack_row,
            )
            .optional()
            .map_err(db)
        })
    }

    /// Every stack, by name.
    pub fn stacks(&self) -> Result<Vec<StackView>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {STACK_COLUMNS} FROM stacks ORDER BY name"))
                .map_err(db)?;
            stmt.query_map([], stack_row)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)
        })
    }

    /// Records a tool binary (replacing an earlier one of the same name and version).
    pub fn add_tool(
        &self,
        name: &str,
        version: &str,
        blob: &BlobRef,
    ) -> Result<ToolView, BackendError> {
        check_tool(name, version)?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO tools (name, version, sha256, size, added_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name, version) DO UPDATE SET
                   sha256 = excluded.sha256, size = excluded.size, added_at = excluded.added_at",
                params![name, version, blob.sha256, blob.size as i64, now()],
            )
            .map_err(db)?;
            event(
                &tx,
                None,
                None,
                None,
                "tool.added",
                &serde_json::json!({"name": name, "version": version, "sha256": blob.sha256}),
            )?;
            tx.commit().map_err(db)
        })?;
        self.tool(name, version)?
            .ok_or_else(|| BackendError::Store(format!("tool {name} {version} vanished")))
    }

    /// A stored tool.
    pub fn tool(&self, name: &str, version: &str) -> Result<Option<ToolView>, BackendError> {
        Ok(self
            .tools()?
            .into_iter()
            .find(|t| t.name == name && t.version == version))
    }

    /// Every stored tool.
    pub fn tools(&self) -> Result<Vec<ToolView>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT name, version, sha256, size, added_at FROM tools ORDER BY name, version")
                .map_err(db)?;
            stmt.query_map([], |r| {
                Ok(ToolView {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    sha256: r.get(2)?,
                    size: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
                    added_at: r.get(4)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_fields_are_checked_where_they_are_given() {
        let store = Store::open_in_memory().unwrap();
        store.insert_pool(ulid::Ulid::generate(), "p").unwrap();
        let source = BlobRef {
            sha256: "ab".repeat(32),
            size: 10,
        };
        let good = CreateStack {
            name: "demo".into(),
            pool: "p".into(),
            source: source.sha256.clone(),
            tool: "tofu".into(),
            tool_version: "1.12.6".into(),
            environment: BTreeMap::from([("TF_VAR_x".into(), "1".into())]),
            ..CreateStack::default()
        };
        let cases = [
            (
                CreateStack {
                    name: "Demo".into(),
                    ..good.clone()
                },
                "stack name \"Demo\"",
            ),
            (
                CreateStack {
                    tool: "../x".into(),
                    ..good.clone()
                },
                "tool name \"../x\"",
            ),
            (
                CreateStack {
                    tool_version: "1/2".into(),
                    ..good.clone()
                },
                "tool version \"1/2\"",
            ),
            (
                CreateStack {
                    environment: BTreeMap::from([("1X".into(), "v".into())]),
                    ..good.clone()
                },
                "environment: \"1X\"",
            ),
            (
                CreateStack {
                    pool: "nope".into(),
                    ..good.clone()
                },
                "no pool named \"nope\"",
            ),
        ];
        for (request, expected) in cases {
            let err = store
                .create_stack(&request, &source)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let stack = store.create_stack(&good, &source).unwrap();
        assert!(
            stack.managed_state,
            "the backend keeps the state by default"
        );
        assert_eq!(stack.source.size, 10);
        let err = store.create_stack(&good, &source).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");

        let update = UpdateStack {
            environment: Some(BTreeMap::new()),
            runner_image: Some("ghcr.io/x/runner:1".into()),
            managed_state: Some(false),
            ..UpdateStack::default()
        };
        let updated = store.update_stack("demo", &update, None).unwrap();
        assert!(updated.environment.is_empty());
        assert_eq!(updated.runner_image.as_deref(), Some("ghcr.io/x/runner:1"));
        assert!(!updated.managed_state);
        assert_eq!(updated.tool_version, "1.12.6", "what is not given stays");
    }
}
