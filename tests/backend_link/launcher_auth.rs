//! The launcher API's door: TLS with the pool token's CA, and a worker that can read and
//! write only its current run stage attempt (issue 11, item 2), each refusal with its status
//! and the message a user reads in the launcher's log.

use std::time::Duration;

use launcher_api::layout::stage_path;
use launcher_api::signature::private_key_from_pem;
use launcher_api::{Job, LogBatch, LogLine, LogPart, LogStream};
use ulid::Ulid;
use workerpool_operator::protocol::{Body, Outcome, WorkerDeregister};

use crate::broker::Broker;
use crate::harness::{StackFixture, new_pool_with_token, start_backend_with_launcher, worker_key};
use crate::launcher_client::{Answer, Launcher, https_client};

/// Sends `call` until the answer is `status` (the backend applies MQTT messages a moment
/// after they are published), for at most 15 s.
async fn eventually(launcher: &Launcher, leaf: &str, status: u16) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = launcher.request("GET", leaf).await;
        if answer.status == status || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_and_writes_only_its_current_run() {
    let mut fx = StackFixture::start().await;
    let token = fx.token.clone();

    // Worker A runs run 1, worker B runs run 2.
    let worker_a = fx.worker().await;
    let (a, key_a) = (worker_a.0, worker_a.1.clone());
    let (s1, la) = fx.planning(&worker_a, false).await;
    let launcher_addr = fx.server.launcher_addr.expect("the launcher API is on");
    assert_eq!(
        s1.launcher_endpoint.as_deref(),
        Some(format!("https://{launcher_addr}").as_str()),
        "every schedule names the launcher API"
    );
    let worker_b = fx.worker().await;
    let (b, key_b) = (worker_b.0, worker_b.1.clone());
    let (s2, lb) = fx.planning(&worker_b, false).await;
    let (run1, run2) = (s1.run_id.clone(), s2.run_id.clone());
    let pool = &mut fx.pool;

    // The right worker on its own run stage attempt.
    let job = la.request("GET", "job").await;
    assert_eq!(job.status, 200, "{}", job.error());
    assert_eq!(job.json::<Job>().run_id, run1);

    // Authentication: 401.
    let call = la.call("GET", "job");
    la.send_with(&call, None).await.refused(
        401,
        "no Authorization header: launcher API requests must be signed",
    );
    la.send_with(&call, Some("Bearer abc".into()))
        .await
        .refused(401, "the Authorization header is not SpaceliftWorker-v1");
    let forged = Launcher {
        key: private_key_from_pem(&key_b.private_key_pem).expect("key"),
        ..la.clone()
    };
    forged.request("GET", "job").await.refused(
        401,
        &format!("the signature does not verify with the public key worker {a} registered"),
    );
    let mut stale = la.call("GET", "job");
    stale.time -= 120;
    la.send(&stale)
        .await
        .refused(401, "s away from the backend's clock (at most 60 s)");
    let once = la.call("GET", "job");
    assert_eq!(la.send(&once).await.status, 200);
    la.send(&once)
        .await
        .refused(401, &format!("nonce {} was used before", once.nonce));

    // Authorisation: 403.
    Launcher::new(&token, a, &key_a.private_key_pem, &s2)
        .request("GET", "job")
        .await
        .refused(
            403,
            &format!(
                "run {} stage planning attempt 1 is dispatched to worker {b}, not to worker {a}",
                run2
            ),
        );
    for (stage, attempt) in [("applying", 1), ("planning", 2)] {
        let mut other = s1.clone();
        other.stage = stage.into();
        other.attempt = attempt;
        Launcher::new(&token, a, &key_a.private_key_pem, &other)
            .request("GET", "job")
            .await
            .refused(
                403,
                &format!(
                    "run {} is at stage planning attempt 1, but the request is signed for stage {stage} attempt {attempt}",
                    run1
                ),
            );
    }
    let mut elsewhere = la.call("GET", "job");
    elsewhere.path = stage_path(&run2, "planning", 1, "job");
    la.send(&elsewhere).await.refused(
        403,
        &format!(
            "the path names run {} stage planning attempt 1, but the request is signed for run {} stage planning attempt 1",
            run2, run1
        ),
    );
    let stranger_key = worker_key();
    let stranger = Ulid::generate();
    Launcher::new(&token, stranger, &stranger_key.private_key_pem, &s1)
        .request("GET", "job")
        .await
        .refused(
            403,
            &format!(
                "worker {stranger} is not registered in pool {}",
                token.pool_id
            ),
        );

    // A deregistered worker, and a run that ended.
    assert_eq!(lb.request("GET", "stop").await.status, 200);
    pool.send(
        b,
        Body::WorkerDeregister(WorkerDeregister {
            reason: "scaled down".into(),
        }),
    )
    .await;
    eventually(&lb, "stop", 403)
        .await
        .refused(403, &format!("worker {b} deregistered at"));
    pool.finish(a, &s1, Outcome::Failed).await;
    eventually(&la, "job", 403).await.refused(
        403,
        &format!(
            "run {} stage planning attempt 1 has ended (the run is failed): a launcher acts only for a stage that is running",
            run1
        ),
    );
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_that_trusts_the_pool_tokens_ca_reaches_the_launcher_api() {
    let broker = Broker::start();
    let (_credentials, token) = new_pool_with_token(&broker, "pool-a");
    let server = start_backend_with_launcher(&broker).await;
    let url = format!(
        "https://{}/launcher/v1/runs/{}/stages/planning/attempts/1/job",
        server.launcher_addr.expect("launcher API"),
        Ulid::generate()
    );
    let trusted = https_client(&token.ca_cert)
        .get(&url)
        .send()
        .await
        .expect("a client trusting the token's CA connects");
    assert_eq!(trusted.status().as_u16(), 401, "and is asked to sign");

    let other_ca = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("CA").pem()
    };
    let err = https_client(&other_ca)
        .get(&url)
        .send()
        .await
        .expect_err("a client trusting another CA does not connect");
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("certificate"),
        "a certificate error: {chain}"
    );
    let plain = reqwest::get(url.replace("https://", "http://")).await;
    assert!(plain.is_err(), "no plain HTTP on the launcher listener");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_with_a_message() {
    let mut fx = StackFixture::start().await;
    let worker = fx.worker().await;
    let (_, launcher) = fx.planning(&worker, false).await;

    let line = |seq: u64, text: String| LogLine {
        seq,
        at: "2026-01-01T00:00:00Z".into(),
        stream: LogStream::Stdout,
        text,
    };
    let long_line = LogBatch {
        part: LogPart::Worker,
        lines: vec![line(0, "x".repeat(64 * 1024 + 1))],
    };
    launcher
        .send(&launcher.call("POST", "logs").json(&long_line))
        .await
        .refused(413, "log line 0 (65537 bytes) is larger than 65536 bytes");
    let big_batch = LogBatch {
        part: LogPart::Worker,
        lines: (0..20)
            .map(|seq| line(seq, "y".repeat(60 * 1024)))
            .collect(),
    };
    launcher
        .send(&launcher.call("POST", "logs").json(&big_batch))
        .await
        .refused(413, "the log batch is larger than 1048576 bytes");
    launcher
        .send(&launcher.call("POST", "result").body(vec![b' '; 65 * 1024]))
        .await
        .refused(413, "the request body is larger than 65536 bytes");
    launcher
        .send(&launcher.call("POST", "logs").body("{\"part\":\"worker\"}"))
        .await
        .refused(400, "the body is not a log batch: missing field `lines`");
    launcher
        .request("PUT", "job")
        .await
        .refused(405, "PUT is not allowed on job: use GET");
    fx.server.shutdown().await;
}
