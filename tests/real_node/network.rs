//! What a run Pod on the real node can reach: a server bound on the node IP (where the
//! backend listens for the launcher), over the node's own bridge.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use workerpool_operator::pod::WORKER_CONTAINER;

use crate::support::real_node::real_node;
use crate::support::{TestNamespace, pod_finished, pod_phase};
use crate::{logs, run, run_pod};

#[tokio::test]
async fn a_run_pod_reaches_a_server_bound_on_the_node_ip() -> anyhow::Result<()> {
    let Some(node) = real_node() else {
        return Ok(());
    };
    let ns = TestNamespace::new("rn-net").await?;
    let listener = TcpListener::bind((node.ip, 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut conn, peer) = listener.accept().await?;
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).await?;
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nhello, worker")
            .await?;
        anyhow::Ok(peer)
    });
    // Bounded by `timeout`: Debian's busybox 1.35 wget crashes (SIGSEGV) with its own -T.
    let script = format!("timeout 10 wget -q -O - http://{addr}/job");
    let pod = run(&ns, &run_pod(node, "net", None, &script), pod_finished).await?;

    assert_eq!(pod_phase(&pod), "Succeeded", "{:?}", pod.status);
    assert_eq!(logs(&ns, "net", WORKER_CONTAINER)?, "hello, worker");
    let peer = tokio::time::timeout(Duration::from_secs(5), server).await???;
    // From the Pod's own address on the bridge (the node's /24), not through any NAT.
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    assert_eq!(Some(peer.ip().to_string()), pod_ip);
    ns.cleanup().await
}
