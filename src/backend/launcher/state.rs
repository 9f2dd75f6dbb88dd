//! The stack's state as OpenTofu's `http` backend sees it, reached through the launcher's
//! local state proxy: `GET`/`POST`/`DELETE .../state` (a write names the lock with `?ID=`),
//! `LOCK`/`UNLOCK .../state/lock` with OpenTofu's lock info as the body. A conflict answers
//! 423 with the holder's lock info, which OpenTofu shows as "state already locked".
//!
//! OpenTofu's own answers to these codes (internal/backend/remote-state/http/client.go):
//! `GET` 200 is a state, 204 and 404 are none; a write succeeds on 200, 201 or 204; `LOCK`
//! succeeds on 200 and reads the holder from a 409 or 423 body; `UNLOCK` succeeds on 200.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::routes::{backend, blocking};
use super::{LauncherError, LauncherState};
use crate::backend::store::{Holder, LockOutcome, StageAccess, Store};

/// What a state request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateOp {
    Read,
    Write,
    Delete,
    Lock,
    Unlock,
}

impl StateOp {
    pub fn parse(method: &str, leaf: &str) -> Option<Self> {
        match (leaf, method) {
            ("state", "GET") => Some(Self::Read),
            ("state", "POST") => Some(Self::Write),
            ("state", "DELETE") => Some(Self::Delete),
            ("state/lock", "LOCK") => Some(Self::Lock),
            ("state/lock", "UNLOCK") => Some(Self::Unlock),
            _ => None,
        }
    }
}

/// The `ID` query parameter (the lock a write is made under), percent-decoded.
fn lock_id_from_query(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "ID")
        .map(|(_, value)| percent_decode(value))
        .filter(|id| !id.is_empty())
}

fn percent_decode(value: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `ID` of OpenTofu's lock info.
fn lock_id_from_info(info: &serde_json::Value) -> Option<String> {
    info.get("ID")
        .and_then(|id| id.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

fn locked_by(info: String) -> Response {
    (
        StatusCode::LOCKED,
        [(header::CONTENT_TYPE, "application/json")],
        info,
    )
        .into_response()
}

/// The stack of the run, if it keeps its state here.
fn managed_stack(store: &Store, access: &StageAccess) -> Result<String, LauncherError> {
    let name = access.stack.clone().ok_or_else(|| {
        LauncherError::NotFound(format!(
            "run {} is a bare run with no stack, so it has no state",
            access.run_id
        ))
    })?;
    let stack = store
        .stack(&name)
        .map_err(backend)?
        .ok_or_else(|| LauncherError::NotFound(format!("no stack named {name:?}")))?;
    if !stack.managed_state {
        return Err(LauncherError::Conflict(format!(
            "stack {name} does not keep its state with the backend (managedState is false)"
        )));
    }
    Ok(name)
}

fn outcome_response(outcome: LockOutcome, stack: &str, ok: Response) -> Response {
    match outcome {
        LockOutcome::Done => ok,
        LockOutcome::HeldBy(info) => locked_by(info),
        LockOutcome::NotLocked { id } => LauncherError::Conflict(format!(
            "the state of stack {stack} is not locked, but the request is made under lock {id}: \
             the lock was released (a lock ends with the stage that took it)"
        ))
        .into_response(),
    }
}

pub(super) async fn respond(
    api: &Arc<LauncherState>,
    op: StateOp,
    access: StageAccess,
    body: Bytes,
    query: &str,
) -> Result<Response, LauncherError> {
    let query = query.to_string();
    let blobs = api.blobs.clone();
    blocking(&api.store, move |s| {
        let stack = managed_stack(s, &access)?;
        let holder = Holder {
            run_id: &access.run_id,
            stage: &access.stage,
            attempt: access.attempt,
        };
        let json_body = |what: &str| -> Result<serde_json::Value, LauncherError> {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|err| LauncherError::BadRequest(format!("{what} is not JSON: {err}")))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(LauncherError::BadRequest(format!(
                    "{what} is not a JSON object"
                )))
            }
        };
        match op {
            StateOp::Read => match s.state_version(&stack, None).map_err(backend)? {
                None => Ok(StatusCode::NO_CONTENT.into_response()),
                Some(version) => {
                    let bytes = blobs.read(&version.sha256).map_err(backend)?;
                    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
                }
            },
            StateOp::Write => {
                let state = json_body("the state")?;
                let serial = state.get("serial").and_then(|v| v.as_i64());
                let lineage = state
                    .get("lineage")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let blob = blobs.put(&body).map_err(backend)?;
                let id = lock_id_from_query(&query);
                let written = s
                    .write_state(&stack, id.as_deref(), &blob, (serial, lineage), &holder)
                    .map_err(backend)?;
                let ok =
                    axum::Json(serde_json::json!({"version": written.version})).into_response();
                Ok(outcome_response(written.outcome, &stack, ok))
            }
            StateOp::Delete => {
                let id = lock_id_from_query(&query);
                let outcome = s
                    .delete_state(&stack, id.as_deref(), &holder)
                    .map_err(backend)?;
                Ok(outcome_response(
                    outcome,
                    &stack,
                    StatusCode::OK.into_response(),
                ))
            }
            StateOp::Lock => {
                let info = json_body("the lock info")?;
                let id = lock_id_from_info(&info).ok_or_else(|| {
                    LauncherError::BadRequest("the lock info has no \"ID\"".into())
                })?;
                let text = String::from_utf8_lossy(&body).into_owned();
                let outcome = s.lock_state(&stack, &id, &text, &holder).map_err(backend)?;
                let ok = ([(header::CONTENT_TYPE, "application/json")], text).into_response();
                Ok(outcome_response(outcome, &stack, ok))
            }
            StateOp::Unlock => {
                let id = if body.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    lock_id_from_info(&json_body("the lock info")?)
                };
                let outcome = s
                    .unlock_state(&stack, id.as_deref(), &holder)
                    .map_err(backend)?;
                Ok(outcome_response(
                    outcome,
                    &stack,
                    StatusCode::OK.into_response(),
                ))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_id_comes_from_the_query_or_the_lock_info() {
        assert_eq!(
            lock_id_from_query("ID=3c2b%2D9f&x=1").as_deref(),
            Some("3c2b-9f")
        );
        assert_eq!(lock_id_from_query("x=1"), None);
        assert_eq!(lock_id_from_query("ID="), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%é%41"), "%éA");
        let info = serde_json::json!({"ID": "abc", "Operation": "OperationTypeApply"});
        assert_eq!(lock_id_from_info(&info).as_deref(), Some("abc"));
        assert_eq!(lock_id_from_info(&serde_json::json!({"ID": ""})), None);
    }
}
