//! Runs one command of the stage: argv without a shell, in its own process group (so an
//! interrupt reaches the tool and everything it started), every stdout/stderr line to the
//! output. A stop or a timeout sends SIGINT to the group (OpenTofu then saves its state and
//! exits), and SIGKILL when the grace is nearly over.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::output::{Output, Stream};
use super::stops::{StopCause, Stops};

/// Lines longer than this are passed on in pieces of this size.
const MAX_LINE: usize = 64 * 1024 - 64;
/// After the command exits, how long output still open (a process it left behind holds the
/// pipe) is read before the command counts as done.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How a command ended.
#[derive(Debug)]
pub enum CommandEnd {
    /// Its exit code (128+N when signal N ended it).
    Exited(i32),
    /// It could not be started: the code a shell would give (126, 127) and why.
    NotStarted(i32, String),
}

/// What one command needs.
pub struct Spec<'a> {
    pub argv: &'a [String],
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub logs_timeout: Option<Duration>,
    /// How long after a stop the group gets SIGKILL.
    pub kill_after: Duration,
}

pub async fn run(spec: &Spec<'_>, output: &Output, stops: &Stops) -> CommandEnd {
    let Some((program, args)) = spec.argv.split_first() else {
        return CommandEnd::NotStarted(127, "the command's argv is empty".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(spec.dir)
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let code = match err.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            return CommandEnd::NotStarted(code, format!("{program}: {err}"));
        }
    };
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?));
    let (lines_tx, mut lines) = mpsc::channel(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, Stream::Stdout, lines_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, Stream::Stderr, lines_tx));
    }

    let mut stop = stops.subscribe();
    let far = Instant::now() + Duration::from_secs(365 * 86400);
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut status = None;
    let mut drain_until = far;
    let mut lines_open = true;
    let mut stop_open = true;
    let mut last_output = Instant::now();
    loop {
        // Cloned out first: the watch's lock must not be held across an await.
        let cause = stop.borrow_and_update().clone();
        if kill_at.is_none()
            && let Some(cause) = cause
        {
            kill_at = Some(interrupt(group, &cause, spec.kill_after, output).await);
        }
        let silent_until = spec
            .logs_timeout
            .map_or(far, |timeout| last_output + timeout);
        tokio::select! {
            line = lines.recv(), if lines_open => match line {
                Some((stream, text)) => {
                    last_output = Instant::now();
                    output.line(stream, &text).await;
                }
                None => lines_open = false,
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            }
            changed = stop.changed(), if stop_open && kill_at.is_none() => {
                stop_open = changed.is_ok();
            }
            () = tokio::time::sleep_until(silent_until), if kill_at.is_none() && status.is_none() => {
                if let Some(after) = spec.logs_timeout {
                    stops.logs_timed_out(after);
                }
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far)), if !killed && status.is_none() => {
                killed = true;
                output
                    .system("the grace period is nearly over: killing the command (SIGKILL)")
                    .await;
                signal(group, Signal::KILL);
            }
            () = tokio::time::sleep_until(drain_until), if status.is_some() => break,
        }
        if status.is_some() && !lines_open {
            break;
        }
    }
    // Lines read but not yet passed on.
    while let Ok((stream, text)) = lines.try_recv() {
        output.line(stream, &text).await;
    }
    match status {
        Some(Ok(status)) => CommandEnd::Exited(
            status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(1),
        ),
        Some(Err(err)) => CommandEnd::NotStarted(126, format!("waiting for {program}: {err}")),
        None => CommandEnd::NotStarted(126, format!("{program} did not report an exit")),
    }
}

/// SIGINT to the command's group; returns when SIGKILL follows.
async fn interrupt(
    group: Option<Pid>,
    cause: &StopCause,
    kill_after: Duration,
    output: &Output,
) -> Instant {
    output
        .system(&format!(
            "{}: interrupting the command (SIGINT); SIGKILL in {}s if it has not exited",
            cause.describe(),
            kill_after.as_secs()
        ))
        .await;
    signal(group, Signal::INT);
    cause.at + kill_after
}

fn signal(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group
        && let Err(err) = kill_process_group(group, signal)
        && err != rustix::io::Errno::SRCH
    {
        crate::note(&format!("cannot signal the command's process group: {err}"));
    }
}

/// Reads lines (without their `\n` or `\r\n`) and passes them on; a line longer than
/// [`MAX_LINE`] goes in pieces. Bytes that are not UTF-8 are replaced.
async fn read_lines(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    lines: mpsc::Sender<(Stream, String)>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, reader);
    let mut line = Vec::new();
    while let Ok(buffer) = reader.fill_buf().await {
        if buffer.is_empty() {
            break;
        }
        // A newline within reach ends the line; else take what fits and pass a full piece on.
        let room = MAX_LINE - line.len();
        let reach = buffer.len().min(room + 1);
        let (used, complete) = match buffer[..reach].iter().position(|b| *b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&buffer[..end]);
                (end + 1, true)
            }
            None => {
                let take = buffer.len().min(room);
                line.extend_from_slice(&buffer[..take]);
                (take, line.len() >= MAX_LINE)
            }
        };
        reader.consume(used);
        if complete && lines.send((stream, text(&mut line))).await.is_err() {
            return;
        }
    }
    if !line.is_empty() {
        let _ = lines.send((stream, text(&mut line))).await;
    }
}

fn text(line: &mut Vec<u8>) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_cleanly_and_long_ones_come_in_pieces() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\n{long}\nlast without newline \u{1F600}");
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(input.as_bytes(), Stream::Stdout, tx).await;
        let mut got = Vec::new();
        while let Some((_, text)) = rx.recv().await {
            got.push(text);
        }
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two");
        assert_eq!((got[2].len(), got[3].len()), (MAX_LINE, 10));
        assert_eq!(got[4], "last without newline \u{1F600}");
        assert_eq!(got.len(), 5);
    }
}
