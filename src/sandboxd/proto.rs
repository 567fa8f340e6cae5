//! The framed protocol between the worker and `drafter-sandboxd`, the executor inside every job container.
//!
//! # Transport
//! The worker attaches to the container's stdin and stdout (no TTY, so Docker multiplexes stdout and stderr and the
//! worker reads only the stdout half). There is no socket and no network: the only way to reach the executor is the
//! Docker API connection the worker already holds. The executor's stderr carries its own log lines.
//!
//! # Frames
//! Both directions use the same frame:
//!
//! ```text
//! u32 big-endian  header length H   (1 ..= MAX_HEADER)
//! u32 big-endian  body length B     (0 ..= MAX_BODY)
//! H bytes         header: one JSON object (a Request or a Response)
//! B bytes         body: raw bytes (stdin for exec, file contents, command output, listings)
//! ```
//!
//! Binary data never goes through JSON, so a 1 MB file costs 1 MB on the wire. Either side drops the connection on a
//! frame that breaks these bounds or does not parse; the worker then treats the sandbox as failed.
//!
//! # Conversation
//! Strictly one request at a time: the worker sends a request with a fresh `id`, the executor answers with the same
//! `id`. A reply with another id means the stream is out of step, and the worker gives up on the container.
//! Requests (`op`): `ping`, `exec`, `read`, `write`, `list`, `search`, `disk_usage`, `unpack`, `pack`. Replies
//! (`reply`): `pong`, `exec`, `data`, `written`, `listing`, `usage`, `unpacked`, `chunk`, `packed`, `error`. See
//! [`Op`] and [`Reply`] for the fields. One exception to one-reply-per-request: `pack` streams the workspace as
//! any number of `chunk` replies (each a piece of one tar, at most [`PACK_CHUNK`] bytes) closed by one `packed` or
//! `error` reply, all with the request's id.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version `ping` reports; bumped on any incompatible change.
pub const VERSION: u32 = 2;
/// Largest header accepted (a JSON object; exec argv and env are the big ones).
pub const MAX_HEADER: u32 = 1 << 20;
/// Largest body accepted: above every file and output size drafter asks for.
pub const MAX_BODY: u32 = 64 << 20;
/// Largest body of a `chunk` reply to `pack`.
pub const PACK_CHUNK: usize = 1 << 20;

/// A request from the worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations. Paths are relative to the workspace; the executor refuses absolute paths and `..`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Liveness and version: answered with [`Reply::Pong`].
    Ping,
    /// Runs `argv` as the agent user in its own process group. The body is fed to stdin (empty: stdin is
    /// `/dev/null`). Answered with [`Reply::Exec`] and the captured output as body.
    Exec {
        /// Program and arguments (no shell unless argv names one).
        argv: Vec<String>,
        /// Working directory, relative to the workspace (`.` by default).
        #[serde(default)]
        cwd: Option<String>,
        /// Extra environment on top of the executor's fixed base (never the host's).
        #[serde(default)]
        env: Vec<(String, String)>,
        /// Wall-time limit: then SIGTERM to the group, and SIGKILL after `kill_grace_ms`.
        timeout_ms: u64,
        /// Time between SIGTERM and SIGKILL.
        kill_grace_ms: u64,
        /// Bytes of output kept (first half, last half; the middle is dropped and marked).
        output_cap: u64,
        /// Bytes of output after which the command is killed (an infinite-output command).
        output_limit: u64,
    },
    /// Reads a regular file (never through a final symlink). Answered with [`Reply::Data`].
    Read {
        /// The file.
        path: String,
        /// Refuse larger files.
        max_bytes: u64,
    },
    /// Writes the body to a file as the agent user, creating parent directories. Answered with [`Reply::Written`].
    Write {
        /// The file.
        path: String,
    },
    /// Lists a directory tree, `.git` excluded: one `<type> <path>` line per entry, sorted, type `d`, `f` or `l`.
    /// Answered with [`Reply::Listing`].
    List {
        /// The directory.
        path: String,
        /// Levels below `path` to descend (1: its entries only).
        max_depth: u32,
        /// Stop after this many entries.
        max_entries: u32,
    },
    /// Searches text files under `path` (`.git` and binary files skipped) for a regular expression: one
    /// `<path>:<line>:<text>` line per match. Answered with [`Reply::Listing`].
    Search {
        /// The regular expression (Rust `regex` syntax, close to `grep -E`).
        pattern: String,
        /// File or directory to search.
        path: String,
        /// Stop after this many matches.
        max_matches: u32,
    },
    /// The workspace's disk usage (allocated blocks). Answered with [`Reply::Usage`].
    DiskUsage,
    /// Unpacks the body, a tar archive, into the workspace as the agent (owner the agent, modes and mtimes kept,
    /// nothing outside the workspace). How the workspace goes in. Answered with [`Reply::Unpacked`].
    Unpack,
    /// The workspace as one tar stream, how it comes out: paths `workspace/<path>`, any `.git` component left out,
    /// symlinks as links (never followed), regular files with their bytes, a second name of a file as a hard-link
    /// entry, directories; fifos, sockets and devices skipped. Answered with [`Reply::Chunk`]s, then
    /// [`Reply::Packed`], or an error: [`ErrorKind::TooLarge`] when the files (each hard link counted as a copy)
    /// would pass `max_bytes`, [`ErrorKind::TooMany`] past `max_entries` names. The worker checks every entry
    /// again: these limits only spare it reading what it would refuse.
    Pack {
        /// Bytes of file content, each hard link counted as its own copy.
        max_bytes: u64,
        /// Names walked, of every kind.
        max_entries: u64,
    },
}

/// A reply from the executor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The answer.
    #[serde(flatten)]
    pub reply: Reply,
}

/// The answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To [`Op::Ping`].
    Pong {
        /// [`VERSION`].
        version: u32,
        /// The executor's process id inside the container.
        pid: u32,
    },
    /// To [`Op::Exec`]; the body is the kept output.
    Exec(ExecReply),
    /// To [`Op::Read`]; the body is the file.
    Data,
    /// To [`Op::Write`].
    Written {
        /// Bytes written.
        bytes: u64,
    },
    /// To [`Op::List`] and [`Op::Search`]; the body is the text.
    Listing {
        /// Whether the entry or match limit cut it short.
        truncated: bool,
    },
    /// To [`Op::Unpack`].
    Unpacked {
        /// Entries unpacked.
        entries: u64,
    },
    /// To [`Op::Pack`]: the body is the next piece of the tar.
    Chunk,
    /// To [`Op::Pack`], after its last chunk.
    Packed {
        /// Names walked (skipped fifos and the like included).
        entries: u64,
        /// File bytes sent (hard links counted as copies).
        bytes: u64,
    },
    /// To [`Op::DiskUsage`].
    Usage {
        /// Bytes allocated under the workspace.
        bytes: u64,
        /// Entries counted.
        entries: u64,
    },
    /// Any request that failed.
    Error {
        /// What kind of failure (the worker maps it to its own error type).
        kind: ErrorKind,
        /// For the log and, for path errors, for the model.
        message: String,
    },
}

/// How an exec ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecReply {
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal, when a signal ended it.
    pub signal: Option<i32>,
    /// Which limit stopped it, if one did.
    pub stopped_by: Option<Limit>,
    /// Whether the middle of the output was dropped.
    pub truncated: bool,
    /// All output bytes the command produced (kept or not).
    pub output_bytes: u64,
    /// Wall time from spawn to exit.
    pub duration_ms: u64,
}

/// The limits the executor enforces on a command.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Its wall time ran out.
    Timeout,
    /// It printed more than the output limit.
    Output,
    /// The kernel's OOM killer ended it (the container's memory limit).
    Memory,
    /// The workspace grew past its disk limit while it ran.
    Disk,
}

impl Limit {
    /// The name used in tool results and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Output => "output",
            Limit::Memory => "memory",
            Limit::Disk => "disk",
        }
    }
}

/// Failure kinds in [`Reply::Error`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// An absolute path, `..`, a NUL byte, an empty path.
    BadPath,
    /// Nothing at the path.
    NotFound,
    /// A directory, symlink or special file where a regular file was wanted (or the reverse).
    NotRegularFile,
    /// Larger than the request allows.
    TooLarge,
    /// More entries than the request allows.
    TooMany,
    /// The request itself is malformed (an empty argv, a pattern that does not compile).
    BadRequest,
    /// The command could not be started (the pids limit, a missing program).
    Spawn,
    /// Any other I/O failure.
    Io,
}

/// A frame that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A length outside the bounds.
    #[error("frame {what} length {len} exceeds {max}")]
    TooLong {
        /// `header` or `body`.
        what: &'static str,
        /// The announced length.
        len: u32,
        /// The bound.
        max: u32,
    },
    /// A header that is empty or not the expected JSON.
    #[error("bad frame header: {0}")]
    BadHeader(String),
    /// Reading or writing failed.
    #[error("frame I/O: {0}")]
    Io(#[from] io::Error),
}

/// Encodes one frame.
pub fn encode<T: Serialize>(header: &T, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(header).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let h = u32::try_from(json.len())
        .ok()
        .filter(|&h| h <= MAX_HEADER)
        .ok_or(FrameError::TooLong {
            what: "header",
            len: u32::MAX,
            max: MAX_HEADER,
        })?;
    let b = u32::try_from(body.len())
        .ok()
        .filter(|&b| b <= MAX_BODY)
        .ok_or(FrameError::TooLong {
            what: "body",
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            max: MAX_BODY,
        })?;
    let mut out = Vec::with_capacity(8 + json.len() + body.len());
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    Ok(out)
}

fn check_lengths(prefix: &[u8; 8]) -> Result<(usize, usize), FrameError> {
    let h = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let b = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if h == 0 || h > MAX_HEADER {
        return Err(FrameError::TooLong {
            what: "header",
            len: h,
            max: MAX_HEADER,
        });
    }
    if b > MAX_BODY {
        return Err(FrameError::TooLong {
            what: "body",
            len: b,
            max: MAX_BODY,
        });
    }
    Ok((h as usize, b as usize))
}

fn parse_header<T: for<'de> Deserialize<'de>>(json: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(json).map_err(|e| FrameError::BadHeader(e.to_string()))
}

/// Reads one frame from a blocking reader: `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> Result<Option<(T, Vec<u8>)>, FrameError> {
    let mut prefix = [0u8; 8];
    let mut got = 0;
    while got < prefix.len() {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (h, b) = check_lengths(&prefix)?;
    let mut header = vec![0u8; h];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; b];
    r.read_exact(&mut body)?;
    Ok(Some((parse_header(&header)?, body)))
}

/// Writes one frame to a blocking writer and flushes it.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    header: &T,
    body: &[u8],
) -> Result<(), FrameError> {
    w.write_all(&encode(header, body)?)?;
    w.flush()?;
    Ok(())
}

/// Reassembles frames from chunks as they arrive (the Docker attach stream cuts stdout wherever it likes).
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one has arrived. Fails on a frame that breaks the bounds, before buffering it.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(
        &mut self,
    ) -> Result<Option<(T, Vec<u8>)>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<8>() else {
            return Ok(None);
        };
        let (h, b) = check_lengths(prefix)?;
        if self.buf.len() < 8 + h + b {
            return Ok(None);
        }
        let header = parse_header(&self.buf[8..8 + h])?;
        let body = self.buf[8 + h..8 + h + b].to_vec();
        self.buf.drain(..8 + h + b);
        Ok(Some((header, body)))
    }
}

// ---- output cap ------------------------------------------------------------------------------------------------

/// Keeps the first half and the last half of a byte stream within `cap` bytes.
pub struct OutputCap {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl OutputCap {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        OutputCap {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            total: 0,
        }
    }

    /// Bytes seen so far, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Takes in more output.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// The kept bytes (with a `[... N bytes omitted ...]` marker where the middle was dropped), and whether
    /// anything was dropped.
    pub fn finish_bytes(self) -> (Vec<u8>, bool) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut out = self.head;
        let truncated = kept != self.total;
        if truncated {
            let omitted = self.total - kept;
            out.extend_from_slice(format!("\n[... {omitted} bytes omitted ...]\n").as_bytes());
        }
        out.extend(self.tail);
        (out, truncated)
    }

    /// [`OutputCap::finish_bytes`] as lossy UTF-8.
    pub fn finish(self) -> (String, bool) {
        let (bytes, truncated) = self.finish_bytes();
        (String::from_utf8_lossy(&bytes).into_owned(), truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_cap_keeps_head_and_tail() {
        let mut c = OutputCap::new(10);
        c.push(b"0123");
        c.push(b"456789");
        assert_eq!(c.finish(), ("0123456789".to_string(), false));

        let mut c = OutputCap::new(10);
        for b in b"abcdefghijklmnopqrstuvwxyz".chunks(3) {
            c.push(b);
        }
        let (text, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(text, "abcde\n[... 16 bytes omitted ...]\nvwxyz");

        let mut c = OutputCap::new(4);
        c.push(&[b'x'; 1000]);
        c.push(b"END");
        let (text, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(text, "xx\n[... 999 bytes omitted ...]\nND");
    }

    #[test]
    fn frames_round_trip_in_any_chunking() {
        let reqs = [
            Request {
                id: 1,
                op: Op::Ping,
            },
            Request {
                id: 2,
                op: Op::Exec {
                    argv: vec!["bash".into(), "-c".into(), "echo hi".into()],
                    cwd: None,
                    env: vec![("A".into(), "b".into())],
                    timeout_ms: 1000,
                    kill_grace_ms: 100,
                    output_cap: 10,
                    output_limit: 100,
                },
            },
            Request {
                id: 3,
                op: Op::Write { path: "a/b".into() },
            },
        ];
        let mut wire = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            wire.extend(encode(r, &vec![i as u8; i * 1000]).unwrap());
        }
        for chunk in [1, 7, 8, 9, 4096, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some((r, body)) = d.next_frame::<Request>().unwrap() {
                    got.push((r, body));
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            for (i, (r, body)) in got.iter().enumerate() {
                assert_eq!(r, &reqs[i]);
                assert_eq!(body.len(), i * 1000);
            }
        }
        // The blocking reader sees the same frames, then a clean end.
        let mut cur = io::Cursor::new(wire);
        for r in &reqs {
            let (got, _) = read_frame::<Request>(&mut cur).unwrap().unwrap();
            assert_eq!(&got, r);
        }
        assert!(read_frame::<Request>(&mut cur).unwrap().is_none());
    }

    #[test]
    fn hostile_frames_are_refused_before_buffering() {
        let mut d = FrameDecoder::default();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(&8u32.to_be_bytes());
        prefix.extend_from_slice(&u32::MAX.to_be_bytes());
        d.push(&prefix);
        assert!(matches!(
            d.next_frame::<Response>(),
            Err(FrameError::TooLong { what: "body", .. })
        ));

        let mut d = FrameDecoder::default();
        d.push(&0u32.to_be_bytes());
        d.push(&0u32.to_be_bytes());
        assert!(d.next_frame::<Response>().is_err());

        let wire = encode(&serde_json::json!({"id": 1, "reply": "nonsense"}), b"").unwrap();
        let mut d = FrameDecoder::default();
        d.push(&wire);
        assert!(matches!(
            d.next_frame::<Response>(),
            Err(FrameError::BadHeader(_))
        ));

        // A torn frame is an error for the blocking reader, not a clean end.
        let wire = encode(
            &Request {
                id: 1,
                op: Op::Ping,
            },
            b"xyz",
        )
        .unwrap();
        let mut cur = io::Cursor::new(&wire[..wire.len() - 1]);
        assert!(read_frame::<Request>(&mut cur).is_err());
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let r = Response {
            id: 7,
            reply: Reply::Exec(ExecReply {
                exit_code: Some(0),
                stopped_by: Some(Limit::Output),
                ..Default::default()
            }),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["reply"], "exec");
        assert_eq!(v["stopped_by"], "output");
        let back: Response = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let e = serde_json::to_value(Response {
            id: 1,
            reply: Reply::Error {
                kind: ErrorKind::NotFound,
                message: "x".into(),
            },
        })
        .unwrap();
        assert_eq!(e["kind"], "not_found");
    }
}
