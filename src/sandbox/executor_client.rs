//! The default transport: the worker's side of the conversation with `drafter-sandboxd` (see [`crate::sandboxd::proto`]).
//!
//! The container is created with stdin open and the worker attaches to it before starting it; from then on a tool
//! call is one frame written to that stream and one read back. Any protocol fault (a reply out of step, a frame
//! that does not parse, no answer within the call's deadline, the stream ending) marks the connection broken: every
//! later call fails at once and the job fails cleanly, while the worker carries on with other jobs.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use bytes::Bytes;

use super::{
    docker_err, ExecLimits, ExecOutput, Executor, Packed, SandboxError, LIST_MAX_ENTRIES,
    SEARCH_MAX_MATCHES,
};
use crate::sandboxd::proto::{self, ErrorKind, FrameDecoder, Limit, Op, Reply, Request, Response};

/// Extra time a call may take beyond the work it asks for (frame transfer, the executor's own bookkeeping).
const CALL_SLACK: Duration = Duration::from_secs(15);
/// Deadline for calls that do no open-ended work (ping, file operations, listing, search, disk usage).
const SHORT_CALL: Duration = Duration::from_secs(120);
/// Time between SIGTERM and SIGKILL for a command that ran out of time.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Bytes of the executor's stderr kept for error messages.
const STDERR_TAIL: usize = 2048;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

struct Conn {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: Output,
    decoder: FrameDecoder,
    stderr: Vec<u8>,
}

/// A connection to one container's executor.
pub struct DaemonClient {
    conn: tokio::sync::Mutex<Conn>,
    next_id: AtomicU64,
    broken: AtomicBool,
    container: String,
    limits: ExecLimits,
}

impl DaemonClient {
    /// Attaches to the container's stdin and stdout (before it starts, so nothing is missed).
    pub async fn attach(
        docker: &Docker,
        container: &str,
        limits: ExecLimits,
    ) -> Result<DaemonClient, SandboxError> {
        let opts = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = docker
            .attach_container(container, Some(opts))
            .await
            .map_err(docker_err("attach"))?;
        Ok(DaemonClient {
            conn: tokio::sync::Mutex::new(Conn {
                input: attached.input,
                output: attached.output,
                decoder: FrameDecoder::default(),
                stderr: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
            container: container.to_string(),
            limits,
        })
    }

    /// Waits for the executor to answer a ping: the container is ready for tool calls.
    pub async fn ready(&self, within: Duration) -> Result<(), SandboxError> {
        match self.call(Op::Ping, &[], within).await? {
            (Reply::Pong { version, .. }, _) if version == proto::VERSION => Ok(()),
            (Reply::Pong { version, .. }, _) => Err(SandboxError::Exec(format!(
                "drafter-sandboxd speaks protocol {version}, this worker {}",
                proto::VERSION
            ))),
            // An executor that could not drop its own privileges refuses everything, and says why.
            (Reply::Error { message, .. }, _) => {
                self.broken.store(true, Ordering::SeqCst);
                Err(SandboxError::Exec(message))
            }
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, reply: &Reply) -> SandboxError {
        self.broken.store(true, Ordering::SeqCst);
        SandboxError::Exec(format!(
            "drafter-sandboxd sent an unexpected reply: {reply:?}"
        ))
    }

    /// One request, one reply, within `deadline`.
    async fn call(
        &self,
        op: Op,
        body: &[u8],
        deadline: Duration,
    ) -> Result<(Reply, Vec<u8>), SandboxError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SandboxError::Exec(
                "the sandbox executor stopped answering earlier in this job".into(),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let frame = proto::encode(&Request { id, op }, body)
            .map_err(|e| SandboxError::Exec(format!("encoding a request: {e}")))?;
        let mut conn = self.conn.lock().await;
        let exchanged = tokio::time::timeout(deadline, exchange(&mut conn, &frame)).await;
        let failure = match exchanged {
            Ok(Ok((resp, body))) if resp.id == id => return Ok((resp.reply, body)),
            Ok(Ok((resp, _))) => out_of_step(resp.id, id),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", deadline.as_secs()),
        };
        Err(self.give_up(&conn, failure))
    }

    /// Marks the connection broken and says why, with the executor's last words.
    fn give_up(&self, conn: &Conn, failure: String) -> SandboxError {
        self.broken.store(true, Ordering::SeqCst);
        let stderr = String::from_utf8_lossy(&conn.stderr).trim().to_string();
        tracing::warn!(container = %self.container, %failure, executor_stderr = %stderr, "sandbox executor failed");
        SandboxError::Exec(if stderr.is_empty() {
            format!("sandbox executor: {failure}")
        } else {
            format!("sandbox executor: {failure} (its last words: {stderr})")
        })
    }

    /// The executor's refusal as the error the agent maps: model-fixable unless it is an I/O failure. `file` is
    /// the path of a read or write (those name the path in their errors); listings and searches keep the
    /// executor's own words.
    fn refused(
        kind: ErrorKind,
        message: String,
        file: Option<&str>,
        max_bytes: usize,
    ) -> SandboxError {
        match (kind, file) {
            (ErrorKind::NotFound, Some(path)) => SandboxError::NotFound(path.to_string()),
            (ErrorKind::NotRegularFile, Some(path)) => {
                SandboxError::NotRegularFile(path.to_string())
            }
            (ErrorKind::TooLarge, Some(path)) => SandboxError::TooLarge {
                path: path.to_string(),
                max_bytes,
            },
            (ErrorKind::Io, _) => SandboxError::Exec(message),
            _ => SandboxError::Tool(message),
        }
    }
}

fn out_of_step(got: u64, sent: u64) -> String {
    format!("reply {got} to request {sent}: the stream is out of step")
}

/// Writes the request and reads frames until the reply is complete. Errors are plain text for the caller's log.
async fn exchange(conn: &mut Conn, frame: &[u8]) -> Result<(Response, Vec<u8>), String> {
    send(conn, frame).await?;
    next_reply(conn).await
}

async fn send(conn: &mut Conn, frame: &[u8]) -> Result<(), String> {
    conn.input
        .write_all(frame)
        .await
        .map_err(|e| format!("writing to its stdin: {e}"))?;
    conn.input
        .flush()
        .await
        .map_err(|e| format!("writing to its stdin: {e}"))
}

/// `pack`'s conversation: the request, then its chunks into `sink` until the closing reply.
async fn stream_pack(
    conn: &mut Conn,
    frame: &[u8],
    id: u64,
    sink: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<Result<Packed, (ErrorKind, String)>, String> {
    send(conn, frame).await?;
    loop {
        let (resp, body) = next_reply(conn).await?;
        if resp.id != id {
            return Err(out_of_step(resp.id, id));
        }
        match resp.reply {
            Reply::Chunk => {
                if sink.send(Bytes::from(body)).await.is_err() {
                    return Ok(Ok(Packed::Abandoned));
                }
            }
            Reply::Packed { .. } => return Ok(Ok(Packed::Done)),
            Reply::Error { kind, message } => return Ok(Err((kind, message))),
            other => return Err(format!("an unexpected reply to pack: {other:?}")),
        }
    }
}

/// Reads frames until one reply is complete.
async fn next_reply(conn: &mut Conn) -> Result<(Response, Vec<u8>), String> {
    loop {
        if let Some(frame) = conn
            .decoder
            .next_frame::<Response>()
            .map_err(|e| e.to_string())?
        {
            return Ok(frame);
        }
        match conn.output.next().await {
            Some(Ok(LogOutput::StdOut { message })) => conn.decoder.push(&message),
            Some(Ok(LogOutput::StdErr { message })) => {
                conn.stderr.extend_from_slice(&message);
                let excess = conn.stderr.len().saturating_sub(STDERR_TAIL);
                conn.stderr.drain(..excess);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("reading its stdout: {e}")),
            None => return Err("it exited (its stdout closed)".into()),
        }
    }
}

#[async_trait::async_trait]
impl Executor for DaemonClient {
    fn name(&self) -> &'static str {
        "sandboxd"
    }

    async fn exec(
        &self,
        argv: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let timeout = timeout.max(Duration::from_millis(100));
        let op = Op::Exec {
            argv,
            cwd: None,
            env: Vec::new(),
            timeout_ms: timeout.as_millis() as u64,
            kill_grace_ms: KILL_GRACE.as_millis() as u64,
            output_cap: self.limits.output_cap as u64,
            output_limit: self.limits.output_limit,
        };
        match self
            .call(op, &stdin, timeout + KILL_GRACE + CALL_SLACK)
            .await?
        {
            (Reply::Exec(r), out) => Ok(ExecOutput {
                // A signal shows as 128+N, as a shell would report it.
                exit_code: r
                    .exit_code
                    .map(i64::from)
                    .or(r.signal.map(|s| 128 + i64::from(s))),
                output: String::from_utf8_lossy(&out).into_owned(),
                truncated: r.truncated,
                timed_out: r.stopped_by == Some(Limit::Timeout),
                stopped_by: r.stopped_by,
            }),
            (Reply::Error { kind, message }, _) => Err(Self::refused(kind, message, None, 0)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        let op = Op::Read {
            path: rel.to_string(),
            max_bytes: max_bytes as u64,
        };
        match self.call(op, &[], SHORT_CALL).await? {
            (Reply::Data, data) => Ok(data),
            (Reply::Error { kind, message }, _) => {
                Err(Self::refused(kind, message, Some(rel), max_bytes))
            }
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let op = Op::Write {
            path: rel.to_string(),
        };
        match self.call(op, contents, SHORT_CALL).await? {
            (Reply::Written { .. }, _) => Ok(()),
            (Reply::Error { kind, message }, _) => Err(Self::refused(kind, message, Some(rel), 0)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError> {
        let op = Op::List {
            path: rel.to_string(),
            max_depth,
            max_entries: LIST_MAX_ENTRIES,
        };
        match self.call(op, &[], SHORT_CALL).await? {
            (Reply::Listing { .. }, text) => Ok(String::from_utf8_lossy(&text).into_owned()),
            (Reply::Error { kind, message }, _) => Err(Self::refused(kind, message, None, 0)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError> {
        let op = Op::Search {
            pattern: pattern.to_string(),
            path: rel.to_string(),
            max_matches: SEARCH_MAX_MATCHES,
        };
        match self.call(op, &[], SHORT_CALL).await? {
            (Reply::Listing { .. }, text) => Ok(String::from_utf8_lossy(&text).into_owned()),
            (Reply::Error { kind, message }, _) => Err(Self::refused(kind, message, None, 0)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn unpack(&self, tar: Vec<u8>) -> Result<bool, SandboxError> {
        match self.call(Op::Unpack, &tar, SHORT_CALL).await? {
            (Reply::Unpacked { .. }, _) => Ok(true),
            (Reply::Error { message, .. }, _) => Err(SandboxError::Exec(format!(
                "unpacking the workspace: {message}"
            ))),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    async fn pack(
        &self,
        max_bytes: u64,
        max_entries: u64,
        within: Duration,
        sink: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<Packed, SandboxError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SandboxError::Exec(
                "the sandbox executor stopped answering earlier in this job".into(),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let op = Op::Pack {
            max_bytes,
            max_entries,
        };
        let frame = proto::encode(&Request { id, op }, &[])
            .map_err(|e| SandboxError::Exec(format!("encoding a request: {e}")))?;
        let mut conn = self.conn.lock().await;
        let streamed =
            tokio::time::timeout(within, stream_pack(&mut conn, &frame, id, &sink)).await;
        match streamed {
            Ok(Ok(Ok(Packed::Abandoned))) => {
                // The rest of the tar is still on its way: the stream cannot be used again.
                let _ = self.give_up(&conn, "the workspace was refused while it came out".into());
                Ok(Packed::Abandoned)
            }
            Ok(Ok(Ok(done))) => Ok(done),
            Ok(Ok(Err((ErrorKind::TooLarge, _)))) => Ok(Packed::OverBytes),
            Ok(Ok(Err((ErrorKind::TooMany, _)))) => Ok(Packed::OverEntries),
            Ok(Ok(Err((_, message)))) => Err(SandboxError::Exec(format!(
                "bringing the workspace out: {message}"
            ))),
            Ok(Err(failure)) => Err(self.give_up(&conn, failure)),
            Err(_) => {
                let _ = self.give_up(&conn, format!("pack took over {} s", within.as_secs()));
                Ok(Packed::OverTime)
            }
        }
    }

    async fn disk_usage(&self) -> Result<u64, SandboxError> {
        match self.call(Op::DiskUsage, &[], SHORT_CALL).await? {
            (Reply::Usage { bytes, .. }, _) => Ok(bytes),
            (Reply::Error { message, .. }, _) => Err(SandboxError::Exec(message)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }
}
