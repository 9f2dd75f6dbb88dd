//! Leader election with two operator processes on the real control plane: both are Ready (the
//! standby too, so a rolling update completes), exactly one acts, and the other takes over
//! when it stops.

use anyhow::Context as _;
use kube::ResourceExt;

use crate::RUNNER;
use crate::stack::{self, Stack, WAIT, pool_yaml};
use crate::support::{Outcome, wait_for};

/// Where one replica serves its probes and (plain HTTP) metrics.
struct ReplicaPorts {
    probes: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
}

impl ReplicaPorts {
    fn free() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<std::net::SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        Ok(Self {
            probes: port()?,
            metrics: port()?,
        })
    }

    fn flags(&self) -> [String; 3] {
        [
            format!("--health-probe-bind-address={}", self.probes),
            format!("--metrics-bind-address={}", self.metrics),
            "--metrics-secure=false".to_string(),
        ]
    }

    async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let response = reqwest::get(format!("http://{}/readyz?verbose", self.probes)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await?)
    }

    /// The `workerpool_leader` gauge, once the metrics endpoint answers.
    async fn leader(&self) -> anyhow::Result<i64> {
        let text = wait_for("the metrics endpoint", WAIT, || async {
            Ok(self.metrics().await.ok())
        })
        .await?;
        text.lines()
            .find_map(|l| l.strip_prefix("workerpool_leader "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no workerpool_leader gauge in\n{text}"))
    }
}

#[tokio::test]
async fn with_two_replicas_both_are_ready_and_only_the_leader_acts() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-leader").await?;
    stack.create_credentials("led", "led")?;
    let lease_ns = format!("--leader-election-namespace={}", stack.ns.name);
    let (one, two) = (ReplicaPorts::free()?, ReplicaPorts::free()?);
    let flags = |ports: &ReplicaPorts| {
        let mut flags = vec!["--leader-elect".to_string(), lease_ns.clone()];
        flags.extend(ports.flags());
        flags
    };
    let first_flags = flags(&one);
    stack.start_operator(&first_flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let second_flags = flags(&two);
    let mut second = stack::Replica::start(
        &stack,
        &second_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    stack.apply(&pool_yaml("led", "led", 2, ""))?;
    stack.wait_registered("led", 2).await?;

    // Ready means able to serve: the leader with its pool's link, and the standby too, so a
    // rolling update's new Pod becomes Ready while the old one holds the Lease.
    for (name, ports) in [("first", &one), ("second", &two)] {
        let ready = wait_for(&format!("the {name} replica ready"), WAIT, || async {
            Ok(ports.readyz().await.ok().filter(|(code, _)| *code == 200))
        })
        .await
        .with_context(|| stack.diagnostics())?;
        assert!(ready.1.contains("[+]kube-api ok"), "{}", ready.1);
    }
    let gauges = (one.leader().await?, two.leader().await?);
    assert!(
        gauges == (1, 0) || gauges == (0, 1),
        "exactly one replica acts: workerpool_leader {gauges:?}"
    );
    let first_leads = gauges.0 == 1;
    let (leader, standby) = if first_leads {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let (leader_log, standby_log) = if first_leads {
        (stack.operator_log(), second.log())
    } else {
        (second.log(), stack.operator_log())
    };
    assert!(leader_log.contains("became leader"), "{leader_log}");
    assert!(!standby_log.contains("became leader"), "{standby_log}");
    // Only the leader created Workers and opened the pool's link.
    assert_eq!(
        stack.worker_list().await?.len(),
        2,
        "exactly poolSize workers, not one set per replica"
    );
    assert!(leader_log.contains("worker created"), "{leader_log}");
    assert!(!standby_log.contains("worker created"), "{standby_log}");
    let links = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("workerpool_link_connected{") && l.ends_with(" 1"))
            .count()
    };
    assert_eq!(links(&leader.metrics().await?), 1, "the leader's link");
    assert_eq!(
        links(&standby.metrics().await?),
        0,
        "no link on the standby"
    );
    // The leader also reports its pool's link (the check follows within its 2 s period).
    wait_for("the leader's readiness to list its link", WAIT, || async {
        let (code, body) = leader.readyz().await?;
        Ok((code == 200 && body.contains("[+]broker/")).then_some(()))
    })
    .await?;
    let (_, standby_ready) = standby.readyz().await?;
    assert!(!standby_ready.contains("broker/"), "{standby_ready}");
    let lease = stack.ns.kubectl([
        "get",
        "lease",
        "workerpool-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    assert!(!lease.is_empty());

    // The leader stops; the standby takes over and the pool goes on.
    if first_leads {
        stack.kill_operator();
    } else {
        second.kill();
    }
    wait_for("the standby to take over", WAIT, || async {
        Ok((standby.leader().await? == 1).then_some(()))
    })
    .await
    .with_context(|| stack.diagnostics())?;
    let run = stack.submit("led", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    stack.wait_run(&run.id, "succeeded").await?;
    assert_eq!(stack.worker_list().await?.len(), 2);
    wait_for(
        "the new leader's readiness to list its link",
        WAIT,
        || async {
            let (code, body) = standby.readyz().await?;
            Ok((code == 200 && body.contains("[+]broker/")).then_some(()))
        },
    )
    .await?;
    second.kill();
    stack.ns.cleanup().await
}
