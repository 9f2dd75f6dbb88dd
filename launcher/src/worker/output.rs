//! The worker's output: every line is echoed to the worker's own stdout or stderr (for
//! `kubectl logs`) and sent, in order, on one `StreamLogs` call to `launcher-grpc`, which
//! numbers the lines and forwards them to the backend. Sending waits while the server's
//! buffer is full: the command is slowed down rather than a line lost.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::proto::launcher_client::LauncherClient;
use crate::proto::{LogLine, LogsAck, log_line};

/// Which stream a line is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    System,
}

pub struct Output {
    lines: mpsc::Sender<LogLine>,
    call: JoinHandle<Result<LogsAck, tonic::Status>>,
    broken: AtomicBool,
}

impl Output {
    /// Opens the `StreamLogs` call.
    pub fn start(client: &LauncherClient<Channel>) -> Self {
        let (lines, receiver) = mpsc::channel(256);
        let mut client = client.clone();
        let call = tokio::spawn(async move {
            client
                .stream_logs(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
                .map(tonic::Response::into_inner)
        });
        Self {
            lines,
            call,
            broken: AtomicBool::new(false),
        }
    }

    /// A line of the command's.
    pub async fn line(&self, stream: Stream, text: &str) {
        match stream {
            Stream::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
            Stream::Stdout | Stream::System => {
                let _ = writeln!(std::io::stdout().lock(), "{text}");
            }
        }
        let line = LogLine {
            stream: match stream {
                Stream::Stdout => log_line::Stream::Stdout,
                Stream::Stderr => log_line::Stream::Stderr,
                Stream::System => log_line::Stream::System,
            } as i32,
            text: text.to_string(),
            at: jiff::Timestamp::now().to_string(),
        };
        if self.lines.send(line).await.is_err() && !self.broken.swap(true, Ordering::Relaxed) {
            crate::note(
                "the log stream to launcher-grpc broke: later lines are only in this container's log",
            );
        }
    }

    /// A line of the worker's own.
    pub async fn system(&self, text: &str) {
        self.line(Stream::System, text).await;
    }

    /// Ends the stream and waits (at most `within`) for the server to have taken every line.
    pub async fn close(self, within: Duration) -> Result<u64, String> {
        drop(self.lines);
        match tokio::time::timeout(within, self.call).await {
            Ok(Ok(Ok(ack))) => Ok(ack.received),
            Ok(Ok(Err(status))) => Err(format!(
                "launcher-grpc refused the logs: {}",
                status.message()
            )),
            Ok(Err(join)) => Err(format!("the log stream failed: {join}")),
            Err(_) => Err(format!("the log stream did not end within {within:?}")),
        }
    }
}
