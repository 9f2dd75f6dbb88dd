//! The operational plumbing against a real API server: leader election on a Lease, the metrics
//! endpoint's TokenReview/SubjectAccessReview protection, and the probes.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use prometheus::{IntCounter, Registry};
use reqwest::StatusCode;
use serde_json::json;
use support::*;
use workerpool_operator::ops::health::Health;
use workerpool_operator::ops::http::{
    CertSource, MetricsServer, MetricsServing, ProbeServer, parse_bind_address,
};
use workerpool_operator::ops::leader::{LeaderElector, Leadership, LeaseConfig, LostReason};
use workerpool_operator::ops::shutdown::Shutdown;

// ------------------------------------------------------------------------------------------
// Leader election
// ------------------------------------------------------------------------------------------

const LEASE_DURATION: Duration = Duration::from_secs(2);
const RENEW_DEADLINE: Duration = Duration::from_millis(1500);
const RETRY_PERIOD: Duration = Duration::from_millis(300);
/// API round trips on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

fn lease_config(ns: &str, lease: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: ns.to_owned(),
        name: lease.to_owned(),
        identity: identity.to_owned(),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        owner: None,
    }
}

async fn lease_spec(ns: &TestNamespace, name: &str) -> anyhow::Result<(Option<String>, i32)> {
    let lease: Lease = ns.api().get(name).await?;
    let spec = lease.spec.unwrap_or_default();
    Ok((spec.holder_identity, spec.lease_transitions.unwrap_or(0)))
}

#[tokio::test]
async fn exactly_one_elector_leads_and_the_other_takes_over_when_it_releases() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("leader-release").await?;
    let a = LeaderElector::new(client().await?, lease_config(&ns.name, "lease", "a"));
    let b = LeaderElector::new(client().await?, lease_config(&ns.name, "lease", "b"));

    let mut a_campaign = Box::pin(a.acquire());
    let mut b_campaign = Box::pin(b.acquire());
    let (leader, follower_name, mut follower): (Leadership, &str, _) = tokio::select! {
        won = &mut a_campaign => (won?, "b", b_campaign),
        won = &mut b_campaign => (won?, "a", a_campaign),
    };
    let leader_name = leader.identity().to_owned();
    assert_eq!(
        lease_spec(&ns, "lease").await?,
        (Some(leader_name.clone()), 0)
    );

    // Well past the lease duration: the leader keeps renewing, the other keeps waiting.
    let waited = tokio::time::timeout(LEASE_DURATION * 2 + RETRY_PERIOD, follower.as_mut()).await;
    assert!(
        waited.is_err(),
        "{follower_name} became leader too while {leader_name} renewed"
    );
    assert!(leader.is_leader());

    let released_at = Instant::now();
    leader.release().await?;
    let next = tokio::time::timeout(LEASE_DURATION + RETRY_PERIOD + SLACK, follower)
        .await
        .context("the follower did not take over after the release")??;
    let took = released_at.elapsed();
    assert_eq!(next.identity(), follower_name);
    // A release hands over at the follower's next retry, not after a lease duration.
    assert!(
        took < LEASE_DURATION,
        "takeover after release took {took:?}"
    );
    assert_eq!(
        lease_spec(&ns, "lease").await?,
        (Some(follower_name.to_owned()), 1)
    );

    next.release().await?;
    assert_eq!(lease_spec(&ns, "lease").await?.0, None);
    ns.cleanup().await
}

#[tokio::test]
async fn a_leader_that_stops_renewing_is_replaced_after_the_lease_duration() -> anyhow::Result<()> {
    let ns = TestNamespace::new("leader-crash").await?;

    // The leader lives on a runtime of its own that we kill: no release, no more renewals,
    // exactly what a crashed or partitioned replica leaves behind.
    let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
    let (led_tx, led_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let config = lease_config(&ns.name, "lease", "crashing");
    let leader_thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = led_tx.send(Err(e.into()));
                return;
            }
        };
        let leadership = rt.block_on(async {
            let elector = LeaderElector::new(client().await?, config);
            anyhow::Ok(elector.acquire().await?)
        });
        match leadership {
            Ok(leadership) => {
                let _ = led_tx.send(Ok(()));
                let _ = crash_rx.recv();
                rt.shutdown_background();
                drop(leadership);
            }
            Err(e) => {
                let _ = led_tx.send(Err(e));
            }
        }
    });
    led_rx.await.context("the leader thread died")??;

    let b = LeaderElector::new(client().await?, lease_config(&ns.name, "lease", "b"));
    let mut campaign = Box::pin(b.acquire());
    // b has seen the live Lease for a while before the crash.
    assert!(
        tokio::time::timeout(LEASE_DURATION, campaign.as_mut())
            .await
            .is_err()
    );
    crash_tx.send(()).context("the leader thread is gone")?;
    let crashed_at = Instant::now();
    let leadership = tokio::time::timeout(LEASE_DURATION + RETRY_PERIOD + SLACK, campaign)
        .await
        .context("no takeover of the abandoned Lease")??;
    let took = crashed_at.elapsed();
    // Not before the lease could have expired: the last renewal was at most a retry period
    // (plus a round trip) before the crash, so well over half the lease duration remained.
    assert!(took >= LEASE_DURATION / 2, "took over after only {took:?}");
    assert_eq!(lease_spec(&ns, "lease").await?, (Some("b".to_owned()), 1));
    leadership.release().await?;
    leader_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the leader thread panicked"))?;
    ns.cleanup().await
}

#[tokio::test]
async fn lost_fires_when_another_identity_writes_the_lease() -> anyhow::Result<()> {
    let ns = TestNamespace::new("leader-stolen").await?;
    let elector = LeaderElector::new(client().await?, lease_config(&ns.name, "lease", "a"));
    let leadership = elector.acquire().await?;
    let lost = leadership.lost();

    // Someone else (a buggy replica, an admin) writes the Lease.
    let api: Api<Lease> = ns.api();
    let mut lease = api.get("lease").await?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".to_owned());
    }
    api.replace("lease", &PostParams::default(), &lease).await?;

    let reason = tokio::time::timeout(RETRY_PERIOD + SLACK, lost)
        .await
        .context("lost() did not fire")?;
    assert_eq!(
        reason,
        LostReason::TakenOver {
            by: "intruder".to_owned()
        }
    );
    assert!(!leadership.is_leader());
    // Releasing a lost Lease must not clear the new holder.
    leadership.release().await?;
    assert_eq!(
        lease_spec(&ns, "lease").await?.0.as_deref(),
        Some("intruder")
    );
    ns.cleanup().await
}

#[tokio::test]
async fn lost_fires_when_the_lease_cannot_be_renewed_within_the_deadline() -> anyhow::Result<()> {
    let ns = TestNamespace::new("leader-deadline").await?;
    // The elector runs as a ServiceAccount whose right to the Lease we then take away.
    ns.api::<ServiceAccount>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "elector" } }))?,
        )
        .await?;
    ns.api::<Role>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "leases" },
                "rules": [{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                            "verbs": ["get", "create", "update"] }]
            }))?,
        )
        .await?;
    ns.api::<RoleBinding>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "leases" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases" },
                "subjects": [{ "kind": "ServiceAccount", "name": "elector", "namespace": ns.name }]
            }))?,
        )
        .await?;
    let sa_client = service_account_client(&ns.name, "elector").await?;
    let elector = LeaderElector::new(sa_client, lease_config(&ns.name, "lease", "a"));
    let leadership = tokio::time::timeout(Duration::from_secs(30), elector.acquire())
        .await
        .context("the ServiceAccount could not acquire the Lease")??;
    let lost = leadership.lost();

    ns.api::<RoleBinding>()
        .delete("leases", &DeleteParams::default())
        .await?;
    let revoked_at = Instant::now();
    let reason = tokio::time::timeout(RENEW_DEADLINE + RETRY_PERIOD + SLACK, lost)
        .await
        .context("lost() did not fire after the renewals were refused")?;
    match &reason {
        LostReason::RenewDeadline {
            last_error: Some(e),
        } if e.contains("forbidden") || e.contains("Forbidden") => {}
        other => bail!("unexpected reason: {other:?}"),
    }
    // It kept trying until the deadline (RBAC removal reaches the authorizer within ms).
    assert!(revoked_at.elapsed() >= RENEW_DEADLINE - RETRY_PERIOD * 2);
    assert!(!leadership.is_leader());
    drop(leadership);
    ns.cleanup().await
}

// ------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------

fn registry() -> anyhow::Result<Registry> {
    let registry = Registry::new();
    let errors = IntCounter::new(
        "spacelift_workerpool_controller_worker_creation_errors_total",
        "Total number of worker creation errors",
    )?;
    registry.register(Box::new(errors.clone()))?;
    errors.inc();
    Ok(registry)
}

fn https_client() -> anyhow::Result<reqwest::Client> {
    install_crypto_provider();
    Ok(reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()?)
}

async fn get_metrics(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, String)> {
    let mut request = http.get(format!("https://{addr}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status(), response.text().await?))
}

/// A ClusterRole allowing `get /metrics`, bound to a ServiceAccount; both are cluster-scoped,
/// so they are deleted explicitly.
struct MetricsReaderBinding {
    client: kube::Client,
    name: String,
}

impl MetricsReaderBinding {
    async fn create(ns: &TestNamespace, service_account: &str) -> anyhow::Result<Self> {
        let name = unique_name("wpt-metrics-reader");
        let client = ns.client.clone();
        Api::<ClusterRole>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": name },
                    "rules": [{ "nonResourceURLs": ["/metrics"], "verbs": ["get"] }]
                }))?,
            )
            .await?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": name },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
                    "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": ns.name }]
                }))?,
            )
            .await?;
        Ok(MetricsReaderBinding { client, name })
    }

    async fn delete(&self) -> anyhow::Result<()> {
        let dp = DeleteParams::default();
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await?;
        Api::<ClusterRole>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn secure_metrics_need_a_token_that_may_get_metrics() -> anyhow::Result<()> {
    let ns = TestNamespace::new("metrics-secure").await?;
    let cert_dir = tempfile::tempdir()?;
    let server = MetricsServer::bind(
        parse_bind_address("127.0.0.1:0")?.context("an address")?,
        MetricsServing {
            secure: true,
            cert_dir: cert_dir.path().to_owned(),
            ..MetricsServing::default()
        },
        registry()?,
        ns.client.clone(),
    )
    .await?;
    assert_eq!(server.cert_source(), Some(&CertSource::SelfSigned));
    let addr = server.local_addr();
    let (trigger, shutdown) = Shutdown::channel();
    let serving = tokio::spawn(server.serve(shutdown.wait()));
    let http = https_client()?;

    let (status, _) = get_metrics(&http, addr, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token");
    let (status, _) = get_metrics(&http, addr, Some("not-a-token")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a bad token");

    ns.api::<ServiceAccount>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "scraper" } }))?,
        )
        .await?;
    let token = service_account_token(&ns.name, "scraper").await?;
    let (status, body) = get_metrics(&http, addr, Some(&token)).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "a valid token without RBAC");
    assert!(
        body.contains(&format!("system:serviceaccount:{}:scraper", ns.name)),
        "{body}"
    );

    let binding = MetricsReaderBinding::create(&ns, "scraper").await?;
    let result = async {
        // The authorizer sees a new binding within moments; a denial is not cached.
        let body = wait_for("metrics to be allowed", DEFAULT_TIMEOUT, || async {
            let (status, body) = get_metrics(&http, addr, Some(&token)).await?;
            Ok((status == StatusCode::OK).then_some(body))
        })
        .await?;
        assert!(
            body.contains(
                "# TYPE spacelift_workerpool_controller_worker_creation_errors_total counter"
            ) && body.contains("spacelift_workerpool_controller_worker_creation_errors_total 1"),
            "{body}"
        );
        let (status, _) = get_metrics(&http, addr, Some("not-a-token")).await?;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a bad token, after a good one"
        );
        anyhow::Ok(())
    }
    .await;
    binding.delete().await?;
    result?;

    // An allowed decision is cached briefly, so scrapes do not cost two API calls each.
    let (status, _) = get_metrics(&http, addr, Some(&token)).await?;
    assert_eq!(status, StatusCode::OK, "the cached decision");

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), serving).await???;
    ns.cleanup().await
}

#[tokio::test]
async fn a_mounted_certificate_is_served_instead_of_a_self_signed_one() -> anyhow::Result<()> {
    install_crypto_provider();
    let cert_dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    std::fs::write(cert_dir.path().join("tls.crt"), cert.pem())?;
    std::fs::write(cert_dir.path().join("tls.key"), key.serialize_pem())?;

    let server = MetricsServer::bind(
        "127.0.0.1:0".parse()?,
        MetricsServing {
            secure: true,
            cert_dir: cert_dir.path().to_owned(),
            ..MetricsServing::default()
        },
        registry()?,
        unreachable_client()?,
    )
    .await?;
    assert_eq!(
        server.cert_source(),
        Some(&CertSource::Files(cert_dir.path().to_owned()))
    );
    let port = server.local_addr().port();
    let (trigger, shutdown) = Shutdown::channel();
    let serving = tokio::spawn(server.serve(shutdown.wait()));

    // Trusting only the mounted certificate: the handshake succeeds, so it is the one served.
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes())?])
        .timeout(Duration::from_secs(20))
        .build()?;
    let response = http
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), serving).await???;
    Ok(())
}

/// A client for an API server that does not exist: the insecure server never calls it.
fn unreachable_client() -> anyhow::Result<kube::Client> {
    install_crypto_provider();
    let config = kube::Config::new("https://127.0.0.1:1".parse()?);
    Ok(kube::Client::try_from(config)?)
}

/// `--enable-http2` (controller-runtime's flag): HTTP/2 is negotiated only when enabled.
#[tokio::test]
async fn the_https_metrics_server_offers_http2_only_with_enable_http2() -> anyhow::Result<()> {
    for (http2, want) in [(false, "1.1"), (true, "2")] {
        let cert_dir = tempfile::tempdir()?;
        let server = MetricsServer::bind(
            "127.0.0.1:0".parse()?,
            MetricsServing {
                secure: true,
                cert_dir: cert_dir.path().to_owned(),
                http2,
            },
            registry()?,
            unreachable_client()?,
        )
        .await?;
        let addr = server.local_addr();
        let (trigger, shutdown) = Shutdown::channel();
        let serving = tokio::spawn(server.serve(shutdown.wait()));
        // curl prefers h2 over TLS when the server offers it; the answer (401: no token) does
        // not matter, the protocol it came in does.
        let output = tokio::process::Command::new("curl")
            .args(["-sk", "--http2", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_version}"])
            .arg(format!("https://{addr}/metrics"))
            .output()
            .await?;
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            want,
            "--enable-http2={http2}"
        );
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), serving).await???;
    }
    Ok(())
}

#[tokio::test]
async fn insecure_metrics_are_plain_http_without_auth() -> anyhow::Result<()> {
    let server = MetricsServer::bind(
        "127.0.0.1:0".parse()?,
        MetricsServing {
            secure: false,
            ..MetricsServing::default()
        },
        registry()?,
        unreachable_client()?,
    )
    .await?;
    assert_eq!(server.cert_source(), None);
    let addr = server.local_addr();
    let (trigger, shutdown) = Shutdown::channel();
    let serving = tokio::spawn(server.serve(shutdown.wait()));

    let response = reqwest::get(format!("http://{addr}/metrics")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.text().await?;
    assert!(
        body.contains("spacelift_workerpool_controller_worker_creation_errors_total 1"),
        "{body}"
    );

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), serving).await???;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Probes
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn readyz_lists_the_failing_check_until_it_turns_ready() -> anyhow::Result<()> {
    let health = Health::new();
    health.set_ready("kube-api");
    health.set_not_ready("broker/pool-a", "connection refused");
    let server = ProbeServer::bind("127.0.0.1:0".parse()?, health.clone()).await?;
    let addr = server.local_addr();
    let (trigger, shutdown) = Shutdown::channel();
    let serving = tokio::spawn(server.serve(shutdown.wait()));
    let get = |path: &'static str| async move {
        let response = reqwest::get(format!("http://{addr}{path}")).await?;
        anyhow::Ok((response.status(), response.text().await?))
    };

    let (status, body) = get("/healthz").await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let (status, body) = get("/readyz").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("[-]broker/pool-a failed: connection refused")
            && body.contains("[+]kube-api ok"),
        "{body}"
    );

    health.set_ready("broker/pool-a");
    let (status, body) = get("/readyz").await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, body) = get("/readyz?verbose").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("[+]broker/pool-a ok"), "{body}");

    // Liveness does not depend on readiness.
    health.set_not_ready("kube-api", "watch failed");
    let (status, _) = get("/healthz").await?;
    assert_eq!(status, StatusCode::OK);

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), serving).await???;
    Ok(())
}

#[tokio::test]
async fn the_lease_goes_with_the_pod_of_its_last_holder() -> anyhow::Result<()> {
    let ns = TestNamespace::new("lease-owner").await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    let pod = pods
        .create(&Default::default(), &support::test_pod("operator"))
        .await?;
    let mut config = lease_config(&ns.name, "owned", "holder");
    config.owner = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "operator".into(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        },
    );
    let leadership = LeaderElector::new(ns.client.clone(), config)
        .acquire()
        .await?;
    let lease: Lease = ns.api().get("owned").await?;
    let owners = lease.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].name, "operator");
    drop(leadership);
    pods.delete(
        "operator",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await?;
    support::wait_for(
        "the Lease collected with its holder's Pod",
        Duration::from_secs(90),
        || async {
            let leases: Api<Lease> = ns.api();
            Ok(leases.get_opt("owned").await?.is_none().then_some(()))
        },
    )
    .await?;
    ns.cleanup().await
}
