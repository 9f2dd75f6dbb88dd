//! Log lines on their way to the backend (`POST .../logs`): numbered in the order they came
//! (seq from 0, no gaps), sent in batches, each batch retried until the backend accepts it
//! and only then the next, so lines are never reordered. The buffer is bounded: when it is
//! full, [`Forwarder::send`] waits, which slows the producer (the worker's gRPC stream, and
//! through it the command's pipe) instead of dropping lines.

use std::collections::VecDeque;
use std::time::Duration;

use launcher_api::{LogBatch, LogLine, LogPart, LogStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Retry};

/// A line's text is cut here (the backend refuses lines over 64 KiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024 - 64;
const CUT_MARK: &str = " [line cut]";
/// A batch holds at most this many lines ...
const MAX_BATCH_LINES: usize = 1000;
/// ... and this many bytes of JSON (the backend takes up to 1 MiB).
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Lines held before [`Forwarder::send`] waits.
const MAX_PENDING_LINES: usize = 4096;
/// How long a first line waits for company before its batch is sent.
const LINGER: Duration = Duration::from_millis(100);
/// How long one attempt to deliver a batch may take (at most 512 KiB): well inside the
/// shortest flush (init's 20 s), so that a request the backend never answers is tried again
/// before the flush gives up, instead of using the whole flush up.
const POST_TIMEOUT: Duration = Duration::from_secs(6);

/// The lines not yet accepted by the backend, with their numbers. Pure.
#[derive(Debug, Default)]
pub struct Pending {
    lines: VecDeque<(LogLine, usize)>,
    next_seq: u64,
}

impl Pending {
    /// Numbers a line and queues it; returns its seq.
    pub fn push(&mut self, stream: LogStream, text: &str, at: String) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = LogLine {
            seq,
            at,
            stream,
            text: cut(text),
        };
        let size = serde_json::to_string(&line).map_or(0, |json| json.len());
        self.lines.push_back((line, size));
        seq
    }

    /// The oldest lines, as many as fit in one batch (always at least one, if any).
    pub fn batch(&self) -> Vec<LogLine> {
        let mut bytes = 0;
        self.lines
            .iter()
            .take(MAX_BATCH_LINES)
            .enumerate()
            .take_while(|(i, (_, size))| {
                bytes += size + 1;
                *i == 0 || bytes <= MAX_BATCH_BYTES
            })
            .map(|(_, (line, _))| line.clone())
            .collect()
    }

    /// The backend accepted the first `count` lines.
    pub fn accepted(&mut self, count: usize) {
        self.lines.drain(..count.min(self.lines.len()));
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The seq the next line gets: every line below it was pushed.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The seq of the oldest line not accepted yet.
    pub fn first_unaccepted(&self) -> u64 {
        self.lines
            .front()
            .map_or(self.next_seq, |(line, _)| line.seq)
    }
}

/// `text`, cut at a character boundary when it is too long.
fn cut(text: &str) -> String {
    if text.len() <= MAX_LINE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_LINE_BYTES - CUT_MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &text[..end])
}

/// Where batches go: the backend, or a recorder in tests.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one batch; an error means it will never be accepted (retries are the sink's).
    fn deliver(&self, batch: &LogBatch) -> impl Future<Output = Result<(), BackendError>> + Send;
}

impl Sink for Backend {
    async fn deliver(&self, batch: &LogBatch) -> Result<(), BackendError> {
        self.post_json("logs", batch, Retry::UNTIL_ACCEPTED, POST_TIMEOUT)
            .await
    }
}

/// What a flush found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Lines the backend accepted.
    pub accepted: u64,
    /// Lines that will not reach it: the backend refused a batch, or the flush ran out of time.
    pub lost: u64,
    /// Why the backend refused, if it did.
    pub refused: Option<String>,
}

enum Command {
    Line(LogStream, String, String),
    Flush(oneshot::Sender<Delivery>),
}

/// The sending side; the batches go out from a task of their own.
#[derive(Clone)]
pub struct Forwarder {
    commands: mpsc::Sender<Command>,
}

impl Forwarder {
    pub fn start<S: Sink>(sink: S, part: LogPart) -> Self {
        let (commands, receiver) = mpsc::channel(MAX_PENDING_LINES);
        tokio::spawn(forward(sink, part, receiver));
        Self { commands }
    }

    /// Queues a line, waiting while the buffer is full.
    pub async fn send(&self, stream: LogStream, text: &str) {
        let at = jiff::Timestamp::now().to_string();
        self.send_at(stream, text, at).await;
    }

    /// Queues a line read at `at` (RFC 3339).
    pub async fn send_at(&self, stream: LogStream, text: &str, at: String) {
        // The task lives as long as any sender: a failed send cannot happen while we hold one.
        let _ = self
            .commands
            .send(Command::Line(stream, text.to_string(), at))
            .await;
    }

    /// Waits until every line queued before this call was accepted, or `within` passed.
    pub async fn flush(&self, within: Duration) -> Delivery {
        let deadline = Instant::now() + within;
        let (reply, answer) = oneshot::channel();
        let asked = tokio::time::timeout_at(deadline, self.commands.send(Command::Flush(reply)));
        let timed_out = Delivery {
            accepted: 0,
            lost: 0,
            refused: Some(format!("the logs were not all delivered within {within:?}")),
        };
        if !matches!(asked.await, Ok(Ok(()))) {
            return timed_out;
        }
        tokio::time::timeout_at(deadline, answer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(timed_out)
    }
}

async fn forward<S: Sink>(sink: S, part: LogPart, mut commands: mpsc::Receiver<Command>) {
    let mut pending = Pending::default();
    let mut flushes: Vec<(u64, oneshot::Sender<Delivery>)> = Vec::new();
    let mut refused: Option<String> = None;
    let mut lost = 0u64;
    let mut open = true;
    loop {
        // Take what is there; when nothing is pending, wait for the first line, then linger.
        if pending.is_empty() && open {
            match commands.recv().await {
                Some(command) => take(command, &mut pending, &mut flushes),
                None => open = false,
            }
            let linger_until = Instant::now() + LINGER;
            while open && pending.len() < MAX_BATCH_LINES {
                match tokio::time::timeout_at(linger_until, commands.recv()).await {
                    Ok(Some(command)) => take(command, &mut pending, &mut flushes),
                    Ok(None) => open = false,
                    Err(_) => break,
                }
            }
        }
        while open && pending.len() < MAX_PENDING_LINES {
            match commands.try_recv() {
                Ok(command) => take(command, &mut pending, &mut flushes),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !pending.is_empty() {
            let lines = pending.batch();
            let count = lines.len();
            if refused.is_none() {
                let batch = LogBatch { part, lines };
                if let Err(err) = sink.deliver(&batch).await {
                    let why = crate::chain(&err);
                    crate::note(&format!("log lines are being dropped: {why}"));
                    refused = Some(why);
                }
            }
            if refused.is_some() {
                lost += count as u64;
            }
            pending.accepted(count);
        }
        let done = pending.first_unaccepted();
        answer_reached(&mut flushes, done, lost, &refused);
        if !open && pending.is_empty() {
            return;
        }
    }
}

fn take(
    command: Command,
    pending: &mut Pending,
    flushes: &mut Vec<(u64, oneshot::Sender<Delivery>)>,
) {
    match command {
        Command::Line(stream, text, at) => {
            pending.push(stream, &text, at);
        }
        Command::Flush(reply) => flushes.push((pending.next_seq(), reply)),
    }
}

fn answer_reached(
    flushes: &mut Vec<(u64, oneshot::Sender<Delivery>)>,
    done: u64,
    lost: u64,
    refused: &Option<String>,
) {
    let mut waiting = Vec::new();
    for (upto, reply) in flushes.drain(..) {
        if upto <= done {
            let _ = reply.send(Delivery {
                accepted: done - lost.min(done),
                lost,
                refused: refused.clone(),
            });
        } else {
            waiting.push((upto, reply));
        }
    }
    *flushes = waiting;
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
