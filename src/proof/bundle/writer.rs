//! [`BundleWriter`]: appends signed, chained statements to a job's bundle, and what each kind of statement is
//! written from.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

use super::*;

/// One model HTTP exchange, as the model client saw it.
#[derive(Debug, Clone)]
pub struct ModelCallInput<'a> {
    /// `anthropic` or `openai`.
    pub provider: &'a str,
    /// Model name as sent.
    pub model: &'a str,
    /// URL path.
    pub endpoint: &'a str,
    /// HTTP status, 0 when no response arrived.
    pub http_status: u16,
    /// The exact request body sent.
    pub request: &'a [u8],
    /// The exact response body received.
    pub response: &'a [u8],
    /// Reported usage.
    pub usage: ReceiptUsage,
    /// Whether `usage` is an estimate (the provider reported none).
    pub usage_estimated: bool,
    /// Wall time.
    pub latency_ms: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// One tool call, as the agent loop ran it.
#[derive(Debug, Clone)]
pub struct ToolCallInput<'a> {
    /// The model turn that asked for it.
    pub turn: u32,
    /// Tool name.
    pub name: &'a str,
    /// The arguments' JSON, as sent by the model.
    pub arguments: &'a [u8],
    /// The full output.
    pub output: &'a [u8],
    /// What the model was shown.
    pub shown: &'a [u8],
    /// Whether it succeeded.
    pub ok: bool,
    /// Exit code of a command.
    pub exit_code: Option<i64>,
    /// The rule that refused it, if the policy did.
    pub refused_by: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// What the worker knows at the end of an attempt; the writer adds the chain, counts and usage.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The policy team.
    pub team: Option<String>,
    /// Attempt number.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// SHA-256 of the ticket's canonical JSON, when it was fetched.
    pub ticket_sha256: Option<String>,
    /// The trigger.
    pub trigger: TriggerInfo,
    /// The worker id.
    pub worker_id: String,
    /// Repository, base, branch.
    pub repo: Option<String>,
    /// Base branch.
    pub base: Option<String>,
    /// Job branch.
    pub branch: Option<String>,
    /// The pushed change.
    pub change: Option<Change>,
    /// Sandbox image name.
    pub sandbox_image: Option<String>,
    /// Sandbox image digest.
    pub sandbox_image_digest: Option<String>,
    /// Start of the attempt.
    pub started_at: DateTime<Utc>,
    /// End of the attempt.
    pub finished_at: DateTime<Utc>,
    /// Policy decisions.
    pub decisions: Vec<Decision>,
    /// The sandbox's network and its connections, for `allowlist:` jobs.
    pub network: Option<NetworkRecord>,
    /// The forge credential used (kind, scope, expiry; never the token).
    pub credential: Option<CredentialRecord>,
    /// Fork mode: the fork the branch was pushed to.
    pub fork: Option<String>,
    /// The outcome.
    pub outcome: Outcome,
}

/// RFC 3339 UTC with milliseconds, as every statement writes times.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How many bytes of a bundle are known to be on disk (made durable by the writer's last sync), readable from
/// another task or thread.
#[derive(Debug, Clone, Default)]
pub struct SyncedLen(Arc<AtomicU64>);

impl SyncedLen {
    /// Bytes of the file, from its start, that the last successful sync covered.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, len: u64) {
        self.0.store(len, Ordering::Release);
    }
}

/// An append-only, signed, chained bundle for one job.
///
/// # Durability
/// Appending writes the line (one `write` call) but does not sync it: a model turn's statements (its model call and
/// its tool calls) are made durable together by one [`BundleWriter::sync`], which the model client calls before the
/// next request leaves, the agent loop when it ends (so before any push, PR or comment), and the run statement
/// itself before the bundle digest is taken. So nothing outside the runner (the model provider, the forge, the
/// ticket) ever acts on a statement that a power cut could still take back. A crash loses at most the current
/// turn's statements, as a cut or torn tail that the verifier names.
#[derive(Debug)]
pub struct BundleWriter {
    path: PathBuf,
    file: Arc<File>,
    /// The file's length as written through this writer.
    written: u64,
    synced: SyncedLen,
    key: Arc<RunnerKey>,
    signer: String,
    key_id: String,
    job_id: String,
    ticket: String,
    policy_hash: String,
    retention: Retention,
    price: Option<Price>,
    count: u64,
    head: String,
    totals: Totals,
    /// Set when a write failed part-way: the file may end in a torn line, so nothing more may be chained to it.
    poisoned: bool,
}

impl BundleWriter {
    /// Opens `<dir>/bundle.jsonl` for this job: creates it, or continues it (a retried job on the same host, or the
    /// run statement after the model client is gone) after verifying what is there. A bundle signed by an earlier,
    /// rotated key is continued with the current key; the verifier follows each statement's signer.
    pub fn open(
        dir: &Path,
        key: Arc<RunnerKey>,
        job_id: &str,
        ticket: &str,
        policy_hash: &str,
    ) -> Result<BundleWriter, ProofError> {
        let path = dir.join(BUNDLE_FILE);
        let io = |source| ProofError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let (count, head, totals) = if len == 0 {
            (0, ZERO_HASH.to_string(), Totals::default())
        } else {
            // A rotated runner key continues the bundle with the new key, so the signer may change here.
            let pins = crate::proof::verify::Pins {
                allow_signer_change: true,
                ..crate::proof::verify::Pins::default()
            };
            let s = crate::proof::verify::verify_unfinished(&path, &pins).map_err(Box::new)?;
            if s.job_id != job_id || s.ticket != ticket {
                return Err(ProofError::WrongJob {
                    path,
                    found_job: s.job_id,
                    found_ticket: s.ticket,
                    job: job_id.to_string(),
                    ticket: ticket.to_string(),
                });
            }
            (s.count, s.head, s.totals)
        };
        Ok(BundleWriter {
            path,
            file: Arc::new(file),
            written: len,
            // What an earlier writer left is synced again before anything new counts as durable.
            synced: SyncedLen::default(),
            signer: key.public_hex(),
            key_id: key.key_id(),
            key,
            job_id: job_id.to_string(),
            ticket: ticket.to_string(),
            policy_hash: policy_hash.to_string(),
            retention: Retention::default(),
            price: None,
            count,
            head,
            totals,
            poisoned: false,
        })
    }

    /// Sets what is kept besides the statements (default: digests only).
    pub fn with_retention(mut self, retention: Retention) -> BundleWriter {
        self.retention = retention;
        self
    }

    /// Sets the model's price, so model-call statements carry their cost.
    pub fn with_price(mut self, price: Option<Price>) -> BundleWriter {
        self.price = price;
        self
    }

    /// Keeps `bytes` under `bodies/` when retention is `full`; returns its digest either way.
    fn body(&self, bytes: &[u8]) -> Result<String, ProofError> {
        match self.retention.bodies {
            retention::Bodies::Full => retention::store(&self.bodies_dir(), bytes),
            retention::Bodies::Digests => Ok(sha256_hex(bytes)),
        }
    }

    fn bodies_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(|d| d.join(BODIES_DIR))
            .unwrap_or_else(|| PathBuf::from(BODIES_DIR))
    }

    fn chain(&self) -> Chain {
        Chain {
            seq: self.count,
            prev: self.head.clone(),
            job_id: self.job_id.clone(),
            ticket: self.ticket.clone(),
            signer: self.signer.clone(),
        }
    }

    /// Records one model exchange (also failed ones).
    pub fn model_call(&mut self, call: ModelCallInput<'_>) -> Result<ModelCall, ProofError> {
        let request = self.body(call.request)?;
        let response = self.body(call.response)?;
        let predicate = ModelCall {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            provider: call.provider.to_string(),
            model: call.model.to_string(),
            endpoint: call.endpoint.to_string(),
            http_status: call.http_status,
            usage: call.usage,
            usage_estimated: call.usage_estimated,
            cost_micros: self.price.map(|p| p.cost_micros_of(&call.usage)),
            latency_ms: call.latency_ms,
            started_at: time(call.started_at),
        };
        let subject = vec![
            Subject::sha256("request", &request),
            Subject::sha256("response", &response),
        ];
        self.append(subject, MODEL_CALL, &predicate)?;
        self.totals.add_model_call(&predicate);
        Ok(predicate)
    }

    /// Records one tool call (also refused and failed ones).
    pub fn tool_call(&mut self, call: ToolCallInput<'_>) -> Result<ToolCall, ProofError> {
        let arguments = self.body(call.arguments)?;
        let output = self.body(call.output)?;
        let shown = self.body(call.shown)?;
        let predicate = ToolCall {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            turn: call.turn,
            name: call.name.to_string(),
            ok: call.ok,
            exit_code: call.exit_code,
            refused_by: call.refused_by,
            duration_ms: call.duration_ms,
            output_bytes: call.output.len() as u64,
            shown_bytes: call.shown.len() as u64,
            shown_sha256: shown,
            started_at: time(call.started_at),
        };
        let subject = vec![
            Subject::sha256("arguments", &arguments),
            Subject::sha256("output", &output),
        ];
        self.append(subject, TOOL_CALL, &predicate)?;
        self.totals.tool_calls += 1;
        Ok(predicate)
    }

    /// Keeps the ticket as fetched (its canonical JSON) under the retention; returns its digest.
    pub fn ticket_body(&self, canonical: &[u8]) -> Result<String, ProofError> {
        self.body(canonical)
    }

    /// Writes the run statement that ends an attempt; returns the bundle digest (SHA-256 of the whole file).
    pub fn run(&mut self, run: RunInput) -> Result<String, ProofError> {
        let mut subject = vec![Subject::sha256(
            "policy",
            self.policy_hash
                .strip_prefix("sha256:")
                .unwrap_or(&self.policy_hash),
        )];
        if let Some(t) = &run.ticket_sha256 {
            subject.push(Subject::sha256(format!("ticket:{}", self.ticket), t));
        }
        if self.count > 0 {
            subject.push(Subject::sha256("chain", &self.head));
        }
        if let Some(c) = &run.change {
            subject.push(Subject {
                name: "commit".into(),
                digest: BTreeMap::from([("sha1".to_string(), c.commit.clone())]),
            });
            subject.push(Subject::sha256("diff", &c.diff_sha256));
        }
        let duration = run.finished_at.signed_duration_since(run.started_at);
        let predicate = Run {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            team: run.team,
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            trigger: run.trigger,
            worker: WorkerInfo {
                id: run.worker_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                key_id: self.key_id.clone(),
            },
            repo: run.repo,
            base: run.base,
            branch: run.branch,
            change: run.change,
            sandbox_image: run.sandbox_image,
            sandbox_image_digest: run.sandbox_image_digest,
            model_calls: self.totals.model_calls,
            tool_calls: self.totals.tool_calls,
            usage: self.totals.usage,
            cost_micros: self.totals.cost_micros,
            started_at: time(run.started_at),
            finished_at: time(run.finished_at),
            duration_ms: u64::try_from(duration.num_milliseconds()).unwrap_or(0),
            decisions: run.decisions,
            retention: self.retention,
            network: run.network,
            credential: run.credential,
            fork: run.fork,
            outcome: run.outcome,
        };
        self.append(subject, RUN, &predicate)?;
        // The digest goes into the PR body and the ticket comment: the statements it covers are on disk first.
        self.sync_blocking()?;
        let bytes = std::fs::read(&self.path).map_err(|source| ProofError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(sha256_hex(&bytes))
    }

    fn append(
        &mut self,
        subject: Vec<Subject>,
        predicate_type: &str,
        predicate: &impl Serialize,
    ) -> Result<(), ProofError> {
        if self.poisoned {
            return Err(ProofError::Poisoned {
                path: self.path.clone(),
            });
        }
        let line = envelope_line(&self.key, &self.key_id, subject, predicate_type, predicate)?;
        let hash = sha256_hex(&line);
        let mut out = line;
        out.push(b'\n');
        // One write call for the whole line keeps concurrent readers from seeing a torn line in practice; the
        // verifier reports a torn final line anyway. Not synced here: see "Durability" above.
        let written = (&*self.file)
            .write_all(&out)
            .and_then(|()| (&*self.file).flush());
        if let Err(source) = written {
            self.poisoned = true;
            return Err(ProofError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.written += out.len() as u64;
        self.count += 1;
        self.head = hash;
        Ok(())
    }

    /// Makes every statement appended so far durable: one `fdatasync` for all of them, on a blocking thread (the
    /// runtime's threads go on serving other jobs meanwhile). Nothing to do when nothing was appended since the
    /// last sync. A failed sync poisons the writer: after a failed `fdatasync` nobody knows what reached the disk.
    pub async fn sync(&mut self) -> Result<(), ProofError> {
        let Some(upto) = self.needs_sync()? else {
            return Ok(());
        };
        let file = self.file.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("sync task failed: {e}"))));
        self.synced_to(upto, synced)
    }

    /// [`BundleWriter::sync`] on the calling thread.
    pub fn sync_blocking(&mut self) -> Result<(), ProofError> {
        let Some(upto) = self.needs_sync()? else {
            return Ok(());
        };
        let synced = self.file.sync_data();
        self.synced_to(upto, synced)
    }

    /// The length a sync would make durable, or `None` when it already is.
    fn needs_sync(&self) -> Result<Option<u64>, ProofError> {
        if self.poisoned {
            return Err(ProofError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok((self.synced.get() < self.written).then_some(self.written))
    }

    fn synced_to(&mut self, upto: u64, result: std::io::Result<()>) -> Result<(), ProofError> {
        match result {
            Ok(()) => {
                self.synced.set(upto);
                Ok(())
            }
            Err(source) => {
                self.poisoned = true;
                Err(ProofError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// How much of the file is known to be durable, as a handle that follows later syncs.
    pub fn synced(&self) -> SyncedLen {
        self.synced.clone()
    }

    /// Bytes appended through this writer and before it, synced or not.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hex SHA-256 of the last line, which commits to the whole bundle; [`ZERO_HASH`] when empty.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Statements written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Model and tool call totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The bundle file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }
}
