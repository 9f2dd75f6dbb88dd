//! The state proxy of `launcher-grpc`, spoken to as OpenTofu's `http` backend does.

use std::io::{Read as _, Write as _};

use launcher_api::StageOutcome;

use super::pod::{Pod, eventually, sigterm, wait};
use super::{LIMIT, RUN, attempt, harness, job};

/// One HTTP/1.1 request to the state proxy, as OpenTofu's http backend makes them.
fn proxy_request(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_state_proxy_forwards_state_and_locks_signed_and_nothing_else() {
    let h = harness();
    let cache = tempfile::tempdir().unwrap();
    let mut stage = job(RUN, "applying", vec![]);
    stage.managed_state = true;
    let mut pod = Pod::new(&h.backend, &stage, cache.path());
    pod.env
        .push(("SPACELIFT_LAUNCHER_GRACE_SECONDS".into(), "2".into()));
    assert!(pod.init().success(), "{}", pod.logs());
    let server = pod.start_grpc_server();
    let proxy = pod.proxy_address().to_string();
    eventually(LIMIT, "the state proxy listening", || {
        std::net::TcpStream::connect(&proxy).is_ok()
    });

    assert_eq!(proxy_request(&proxy, "GET", "/state", "").0, 404);
    assert_eq!(
        proxy_request(&proxy, "POST", "/state?ID=lock-1", r#"{"serial":1}"#).0,
        204
    );
    assert_eq!(
        proxy_request(&proxy, "GET", "/state", ""),
        (200, r#"{"serial":1}"#.into())
    );
    assert_eq!(
        proxy_request(&proxy, "LOCK", "/state/lock", r#"{"ID":"lock-1"}"#).0,
        200
    );
    // A second lock gets the backend's 423 and the holder's lock info, as OpenTofu expects.
    assert_eq!(
        proxy_request(&proxy, "LOCK", "/state/lock", r#"{"ID":"lock-2"}"#),
        (423, r#"{"ID":"lock-1"}"#.into())
    );
    assert_eq!(
        proxy_request(&proxy, "UNLOCK", "/state/lock", r#"{"ID":"lock-1"}"#).0,
        200
    );
    // Only the state passes: not the job, not another method.
    assert_eq!(proxy_request(&proxy, "GET", "/job", "").0, 404);
    assert_eq!(proxy_request(&proxy, "PUT", "/state", "x").0, 405);
    assert_eq!(
        h.backend.books().state.as_deref(),
        Some(&br#"{"serial":1}"#[..])
    );

    // Deleted before a worker ever came: the server reports that and ends within the grace.
    sigterm(&server);
    assert_eq!(wait(server, LIMIT, "the grpc server").code(), Some(0));
    let books = h.backend.books();
    let result = &books.results[&attempt(&stage)];
    assert_eq!(result.outcome, StageOutcome::Failed);
    assert_eq!(
        result.message,
        "the run Pod was deleted before the worker started"
    );
}
