//! The backend's test harness: the backend itself, its CLI, and stand-ins for the operator
//! (one worker on its own link, or a pool of workers on one link as the operator has them).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use launcher_api::token::{PoolToken, read_pool_token};
use tokio::sync::mpsc;
use ulid::Ulid;
use workerpool_operator::backend::client;
use workerpool_operator::backend::pool::{PoolRequest, create_pool};
use workerpool_operator::backend::serve::{ServeOptions, Server};
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::backend::store::TriggerRun;
use workerpool_operator::controller::keys::{WorkerKey, generate_worker_key};
use workerpool_operator::credentials::{Credentials, decode_credentials};
use workerpool_operator::link::{Inbound, PoolLink};
use workerpool_operator::protocol::{
    Body, Message, Outcome, PodCreated, RunFinished, RunRef, RunSchedule, WorkerRegister,
    WorkerState, WorkerStatus,
};

use crate::broker::{Broker, backend_binary};
use crate::launcher_client::Launcher;
use crate::{fast_options, next};

pub const WAIT: Duration = Duration::from_secs(15);

pub async fn start_backend(broker: &Broker) -> Server {
    start_backend_with(broker, None).await
}

/// The backend with its launcher API on a free loopback port.
pub async fn start_backend_with_launcher(broker: &Broker) -> Server {
    start_backend_with(broker, Some("127.0.0.1:0".parse().expect("addr"))).await
}

async fn start_backend_with(broker: &Broker, launcher_listen: Option<SocketAddr>) -> Server {
    workerpool_operator::backend::install_crypto_provider();
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tick: Duration::from_millis(200),
        link: fast_options(),
        launcher_listen,
        ..ServeOptions::default()
    };
    let server = Server::start(&StateDir::new(&broker.state_dir), options)
        .await
        .expect("backend starts");
    // A fresh backend has no session yet: what a pool publishes before it subscribes is lost.
    server
        .wait_connected(WAIT)
        .await
        .expect("the backend subscribed");
    server
}

/// A pool in the broker's backend state: its credentials and the token as the run Pod reads
/// it (`/opt/spacelift/identity/pool.token`).
pub fn new_pool_with_token(broker: &Broker, name: &str) -> (Credentials, PoolToken) {
    let pool = create_pool(
        &StateDir::new(&broker.state_dir),
        &PoolRequest {
            name,
            csr_pem: None,
            key_bits: 2048,
            broker_url: Some(&broker.url),
        },
    )
    .expect("create pool");
    let key = pool.private_key_value().expect("generated key");
    let credentials =
        decode_credentials(pool.token.as_bytes(), key.as_bytes()).expect("credentials decode");
    let token = read_pool_token(&pool.token).expect("the launcher reads the token");
    (credentials, token)
}

/// A worker key pair, as the operator makes one for each Worker.
pub fn worker_key() -> WorkerKey {
    generate_worker_key().expect("RSA key")
}

/// Runs the CLI; the output whatever the exit status.
pub fn cli_output(broker: &Broker, args: &[&str]) -> std::process::Output {
    Command::new(backend_binary())
        .arg("--state-dir")
        .arg(&broker.state_dir)
        .args(args)
        .output()
        .expect("run workerpool-backend")
}

pub fn cli(broker: &Broker, args: &[&str]) -> String {
    let output = Command::new(backend_binary())
        .arg("--state-dir")
        .arg(&broker.state_dir)
        .args(args)
        .output()
        .expect("run workerpool-backend");
    assert!(
        output.status.success(),
        "workerpool-backend {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub async fn wait_for_run_state(base: &str, run_id: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let runs = client::list_runs(base, None).await.expect("list runs");
        let current = runs
            .iter()
            .find(|r| r.id == run_id)
            .map(|r| r.state.clone());
        if current.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run_id} is {current:?}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stands in for the operator: one worker, driven by hand.
pub struct FakeWorker {
    pub id: Ulid,
    link: PoolLink,
    pub inbound: mpsc::Receiver<Inbound>,
}

impl FakeWorker {
    pub async fn register(pool: &Credentials) -> Self {
        let (link, inbound) = PoolLink::connect(pool, fast_options()).expect("connect");
        link.wait_connected(WAIT).await.expect("connected");
        let mut worker = Self {
            id: Ulid::generate(),
            link,
            inbound,
        };
        worker
            .send(Body::WorkerRegister(WorkerRegister {
                name: format!("pool-{}", Ulid::generate().to_string().to_lowercase()),
                public_key: "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n".into(),
                metadata: Default::default(),
            }))
            .await;
        let registered = worker.next().await;
        assert!(matches!(registered.message.body, Body::WorkerRegistered(_)));
        registered.ack().await.expect("ack");
        worker.state(WorkerStatus::Idle, None).await;
        worker
    }

    pub async fn send(&self, body: Body) {
        self.link
            .publish(&Message::for_worker(self.id, body))
            .await
            .expect("publish");
    }

    pub async fn state(&self, state: WorkerStatus, run: Option<RunRef>) {
        self.send(Body::WorkerState(WorkerState {
            state,
            current_run: run,
        }))
        .await;
    }

    /// The next message for this worker (pool-level status messages are acknowledged and
    /// skipped).
    pub async fn next(&mut self) -> Inbound {
        loop {
            let delivery = next(&mut self.inbound, WAIT)
                .await
                .expect("a message for the worker");
            if matches!(
                delivery.message.body,
                Body::PoolStatus(_) | Body::PoolDemand(_)
            ) {
                delivery.ack().await.expect("ack");
                continue;
            }
            return delivery;
        }
    }

    pub async fn next_schedule(&mut self) -> (Inbound, RunSchedule) {
        let delivery = self.next().await;
        let Body::RunSchedule(schedule) = delivery.message.body.clone() else {
            panic!("expected a schedule, got {:?}", delivery.message.body);
        };
        (delivery, schedule)
    }

    /// Accept, create the Pod, finish with `outcome`, go back to IDLE.
    pub async fn run_to_end(&self, schedule: &RunSchedule, outcome: Outcome) {
        let run = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
        self.send(Body::RunAccepted(run.clone())).await;
        self.state(WorkerStatus::Busy, Some(run.clone())).await;
        self.send(Body::PodCreated(PodCreated {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            namespace: "default".into(),
            pod_name: run.pod_name(),
        }))
        .await;
        self.send(Body::RunFinished(RunFinished {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            outcome,
            cause: None,
            message: String::new(),
            exit_code: Some(0),
        }))
        .await;
        self.state(WorkerStatus::Idle, None).await;
    }
}

/// Stands in for the operator: one link for the pool, several workers on it, each with its
/// own RSA key registered through `worker.register`, as the operator registers them.
pub struct FakePool {
    link: PoolLink,
    inbound: mpsc::Receiver<Inbound>,
    held: VecDeque<Inbound>,
}

impl FakePool {
    pub async fn connect(pool: &Credentials) -> Self {
        let (link, inbound) = PoolLink::connect(pool, fast_options()).expect("connect");
        link.wait_connected(WAIT).await.expect("connected");
        Self {
            link,
            inbound,
            held: VecDeque::new(),
        }
    }

    /// Registers a worker with `public_key_pem`, waits for `worker.registered`, reports IDLE.
    pub async fn register(&mut self, public_key_pem: &str) -> Ulid {
        let worker = Ulid::generate();
        self.send(
            worker,
            Body::WorkerRegister(WorkerRegister {
                name: format!("pool-{}", worker.to_string().to_lowercase()),
                public_key: public_key_pem.to_string(),
                metadata: Default::default(),
            }),
        )
        .await;
        let registered = self.next_for(worker).await;
        assert!(matches!(registered.message.body, Body::WorkerRegistered(_)));
        registered.ack().await.expect("ack");
        self.state(worker, WorkerStatus::Idle, None).await;
        worker
    }

    pub async fn send(&self, worker: Ulid, body: Body) {
        self.link
            .publish(&Message::for_worker(worker, body))
            .await
            .expect("publish");
    }

    pub async fn state(&self, worker: Ulid, state: WorkerStatus, run: Option<RunRef>) {
        self.send(
            worker,
            Body::WorkerState(WorkerState {
                state,
                current_run: run,
            }),
        )
        .await;
    }

    /// The next message for `worker`; pool-level status messages are acknowledged and
    /// skipped, other workers' messages are kept for them.
    pub async fn next_for(&mut self, worker: Ulid) -> Inbound {
        let held = self
            .held
            .iter()
            .position(|d| d.topic.worker == Some(worker));
        if let Some(delivery) = held.and_then(|i| self.held.remove(i)) {
            return delivery;
        }
        loop {
            let delivery = next(&mut self.inbound, WAIT)
                .await
                .unwrap_or_else(|| panic!("a message for worker {worker}"));
            if matches!(
                delivery.message.body,
                Body::PoolStatus(_) | Body::PoolDemand(_)
            ) {
                delivery.ack().await.expect("ack");
            } else if delivery.topic.worker == Some(worker) {
                return delivery;
            } else {
                self.held.push_back(delivery);
            }
        }
    }

    /// The next schedule for `worker`, acknowledged.
    pub async fn next_schedule(&mut self, worker: Ulid) -> RunSchedule {
        let delivery = self.next_for(worker).await;
        let Body::RunSchedule(schedule) = delivery.message.body.clone() else {
            panic!(
                "expected a schedule for {worker}, got {:?}",
                delivery.message.body
            );
        };
        delivery.ack().await.expect("ack");
        schedule
    }

    /// Accepts the schedule and creates its Pod, as the operator does.
    pub async fn start(&self, worker: Ulid, schedule: &RunSchedule) {
        let run = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
        self.send(worker, Body::RunAccepted(run.clone())).await;
        self.state(worker, WorkerStatus::Busy, Some(run.clone()))
            .await;
        self.send(
            worker,
            Body::PodCreated(PodCreated {
                run_id: run.run_id.clone(),
                stage: run.stage.clone(),
                attempt: run.attempt,
                namespace: "default".into(),
                pod_name: run.pod_name(),
            }),
        )
        .await;
    }

    /// Reports the Pod's end with `outcome` and goes back to IDLE.
    pub async fn finish(&self, worker: Ulid, schedule: &RunSchedule, outcome: Outcome) {
        self.send(
            worker,
            Body::RunFinished(RunFinished {
                run_id: schedule.run_id.clone(),
                stage: schedule.stage.clone(),
                attempt: schedule.attempt,
                outcome,
                cause: None,
                message: String::new(),
                exit_code: Some(if outcome == Outcome::Succeeded { 0 } else { 1 }),
            }),
        )
        .await;
        self.state(worker, WorkerStatus::Idle, None).await;
    }
}

/// The fake tool binary every stack here uses (`tofu 1.12.6`).
pub const FAKE_TOFU: &[u8] = b"#!/bin/sh\necho fake tofu \"$@\"\n";

/// Stores the fake tool with `tool add` and creates stack `name` in pool `pool` with
/// `stack create` (a directory source with one file), through the CLI.
pub fn add_stack(broker: &Broker, base: &str, name: &str, pool: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = dir.path().join("tofu");
    std::fs::write(&tool, FAKE_TOFU).expect("tool");
    let tool = tool.to_string_lossy().into_owned();
    cli(
        broker,
        &[
            "tool",
            "add",
            "--name",
            "tofu",
            "--version",
            "1.12.6",
            "--file",
            &tool,
        ],
    );
    let source = dir.path().join("infra");
    std::fs::create_dir_all(&source).expect("source dir");
    std::fs::write(source.join("main.tf"), "output \"x\" { value = var.x }\n").expect("main.tf");
    let source = source.to_string_lossy().into_owned();
    cli(
        broker,
        &[
            "stack",
            "create",
            "--name",
            name,
            "--pool",
            pool,
            "--source",
            &source,
            "--tool",
            "tofu",
            "--tool-version",
            "1.12.6",
            "--env",
            "TF_VAR_x=1",
            "--backend-url",
            base,
        ],
    );
    dir
}

impl FakePool {
    /// The next schedule for any of `workers`, acknowledged, with the worker it is for.
    pub async fn next_schedule_any(&mut self, workers: &[Ulid]) -> (Ulid, RunSchedule) {
        let position = self
            .held
            .iter()
            .position(|d| d.topic.worker.is_some_and(|w| workers.contains(&w)));
        let delivery = match position.and_then(|i| self.held.remove(i)) {
            Some(delivery) => delivery,
            None => loop {
                let delivery = next(&mut self.inbound, WAIT)
                    .await
                    .expect("a schedule for the pool");
                match delivery.topic.worker {
                    Some(w) if workers.contains(&w) => break delivery,
                    _ if matches!(delivery.message.body, Body::PoolStatus(_)) => {
                        delivery.ack().await.expect("ack")
                    }
                    _ => self.held.push_back(delivery),
                }
            },
        };
        let worker = delivery.topic.worker.expect("a worker topic");
        let Body::RunSchedule(schedule) = delivery.message.body.clone() else {
            panic!("expected a schedule, got {:?}", delivery.message.body);
        };
        delivery.ack().await.expect("ack");
        (worker, schedule)
    }
}

/// A backend with its launcher API, pool `pool-a` with stack `demo`, and the operator's
/// stand-in connected: what every stack-run test starts from.
pub struct StackFixture {
    pub broker: Broker,
    pub token: PoolToken,
    pub server: Server,
    pub base: String,
    pub pool: FakePool,
    _stack: tempfile::TempDir,
}

impl StackFixture {
    pub async fn start() -> Self {
        let broker = Broker::start();
        let (credentials, token) = new_pool_with_token(&broker, "pool-a");
        let server = start_backend_with_launcher(&broker).await;
        let base = format!("http://{}", server.addr);
        let stack = add_stack(&broker, &base, "demo", "pool-a");
        let pool = FakePool::connect(&credentials).await;
        Self {
            broker,
            token,
            server,
            base,
            pool,
            _stack: stack,
        }
    }

    /// Registers a worker with a fresh key.
    pub async fn worker(&mut self) -> (Ulid, WorkerKey) {
        let key = worker_key();
        (self.pool.register(&key.public_key_pem).await, key)
    }

    /// Triggers a run of `demo`, takes its planning schedule on `worker`, starts its Pod, and
    /// returns the schedule with the launcher of that Pod.
    pub async fn planning(
        &mut self,
        (worker, key): &(Ulid, WorkerKey),
        proposed: bool,
    ) -> (RunSchedule, Launcher) {
        let run = client::trigger_run(&self.base, "demo", &TriggerRun { proposed })
            .await
            .expect("trigger");
        let schedule = self.pool.next_schedule(*worker).await;
        assert_eq!(schedule.run_id, run.id);
        self.pool.start(*worker, &schedule).await;
        let launcher = Launcher::new(&self.token, *worker, &key.private_key_pem, &schedule);
        (schedule, launcher)
    }
}
