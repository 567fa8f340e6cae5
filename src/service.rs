//! The `drafter serve` process: everything it builds and runs, from a loaded configuration to a graceful stop (the
//! queue, the policy and its SIGHUP reload, retention, the runner key, the sandbox with orphan cleanup and the warm
//! pool, the HTTP server, the poller, the worker pool). Like mini-redis's `server::run`, the caller hands in the
//! listener and a shutdown future; the binary adds only the signals and the words.
//!
//! It starts in two steps so that the port opens only once a job could run: [`Service::start`] does everything
//! that may fail or wait (the queue's database may still be booting), then the caller binds `serve.listen` and
//! hands the listener to [`Service::run`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, JiraFlavor, Secret, SecretRef};
use crate::jira::{self, JiraClient, JiraError};
use crate::policy::{self, Policy, PolicyError};
use crate::proof::{self, ProofError};
use crate::queue::{Queue, QueueError};
use crate::sandbox::{Sandbox, SandboxError};
use crate::server;
use crate::worker::{self, pool::PoolStats};

/// Why the service could not start (once running, it only stops when asked).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A secret the service needs was not read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be made.
    #[error("creating data directory {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The queue's database (a bad location, or still down after a minute of retries).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// No policy the worker can prove it runs under.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The runner's signing key.
    #[error(transparent)]
    Key(#[from] ProofError),
    /// Docker, or the sandbox image.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The Jira client cannot be built.
    #[error(transparent)]
    Jira(#[from] JiraError),
    /// The clients and key every job shares cannot be built.
    #[error(transparent)]
    Services(#[from] worker::ServicesError),
    /// The listener handed in has no local address.
    #[error(transparent)]
    Listener(#[from] std::io::Error),
}

/// What the service tells its operator while it starts, runs and stops, beyond its `tracing` logs. The CLI prints
/// these as `drafter serve: ...` lines; they go through the caller so that the library never writes to stderr.
#[derive(Debug, Clone)]
pub enum Event {
    /// Something about the bot's Data Center identity an operator should fix.
    BotIdentityWarning(String),
    /// The queue's database did not answer yet; the next try is in `retry_in`.
    QueueNotReady {
        /// Why, with any credentials cut out of URLs.
        error: String,
        /// The wait before the next try.
        retry_in: Duration,
    },
    /// The policy in force at start.
    Policy {
        /// Its `sha256:` hash.
        hash: String,
        /// Where it came from.
        source: String,
        /// The key id of its verified signature.
        signed_by: Option<String>,
    },
    /// The HTTP server accepts connections.
    Listening {
        /// Its address.
        addr: SocketAddr,
        /// Where the webhook secret comes from: webhooks are on exactly when there is one.
        webhook_secret: Option<SecretRef>,
        /// The queue's backend (`sqlite`, `postgres`).
        queue: &'static str,
        /// Jobs at once.
        concurrency: usize,
    },
    /// SIGHUP: new jobs use the new policy.
    PolicyReloaded {
        /// The hash of the policy replaced.
        old: String,
        /// The hash of the policy now in force.
        new: String,
    },
    /// SIGHUP, but the file failed its checks: the old policy stays.
    PolicyReloadRefused {
        /// Why.
        error: String,
        /// The hash of the policy kept.
        keeping: String,
    },
    /// The shutdown future resolved: no more claims; running jobs drain.
    Stopping,
}

/// Where [`Event`]s go. Called inline, so lines keep their order with the logs.
pub type Report = Arc<dyn Fn(&Event) + Send + Sync>;

/// A task aborted when dropped: the background loops end with the service, also when starting fails half-way.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A started service, ready to take a listener: queue open, policy loaded, sandbox up.
pub struct Service {
    config: Arc<Config>,
    webhook_secret: Option<Secret>,
    github_webhook_secret: Option<Secret>,
    queue: Arc<dyn Queue>,
    policy: Arc<policy::Current>,
    sandbox: Arc<Sandbox>,
    /// What every job of the pool runs over, built once.
    services: Arc<worker::Services>,
    report: Report,
    reloader: Background,
    purger: Background,
}

/// Starts the service and runs it on `listener` until `shutdown` resolves and the running jobs have drained.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    report: Report,
) -> Result<PoolStats, ServiceError> {
    Service::start(config, report)
        .await?
        .run(listener, shutdown)
        .await
}

impl Service {
    /// Everything before the port opens: the bot's identity (Data Center), the data directory, the queue (retried
    /// for a minute), the policy and its SIGHUP reload, retention, the runner key, Docker and the image, orphaned
    /// containers, the warm pool. `config` is loaded for `Purpose::Serve`.
    pub async fn start(mut config: Config, report: Report) -> Result<Service, ServiceError> {
        learn_datacenter_bot(&mut config, &report).await;
        let config = Arc::new(config);
        let webhook_secret = match &config.serve.webhook_secret {
            Some(c) => Some(c.value()?.clone()),
            None => None,
        };
        let github_webhook_secret = match &config.serve.github_webhook_secret {
            Some(c) => Some(c.value()?.clone()),
            None => None,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServiceError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let queue = open_queue(&config.serve.queue, &report).await?;
        // The policy: a worker that cannot prove which policy governs it takes no jobs.
        let loaded = Policy::load(&config)?;
        report(&Event::Policy {
            hash: loaded.hash.clone(),
            source: loaded.source.clone(),
            signed_by: loaded.signed_by.clone(),
        });
        let policy = Arc::new(policy::Current::new(loaded));
        let reloader = Background(tokio::spawn(reload_on_sighup(
            config.clone(),
            policy.clone(),
            report.clone(),
        )));
        // Retention: bodies past their policy's max age are removed at start and then hourly.
        let purger = {
            let data_dir = config.data_dir.clone();
            Background(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    let dir = data_dir.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        proof::retention::purge(&dir, chrono::Utc::now(), false)
                    })
                    .await;
                }
            }))
        };
        // The signing key: made now if this is the first start, so an unusable key stops the worker before any job.
        let key = proof::RunnerKey::load_or_create(&config.data_dir)?;
        tracing::info!(public_key = %key.public_hex(), "runner key");
        let sandbox = Arc::new(Sandbox::connect(&config.sandbox).await?);
        sandbox.ensure_image().await?;
        match sandbox.remove_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed containers left behind by a crashed worker"
            ),
            Err(e) => tracing::warn!(error = %e, "could not look for leftover containers"),
        }
        // With sandbox.pool_size, the first jobs start warm too.
        if let Err(e) = sandbox.prewarm().await {
            tracing::warn!(error = %e, "could not start the warm pool; jobs start cold");
        }
        // Built once for every job of the pool; the worker id is the lease owner of its claims and goes into every
        // run statement. Team budgets are counted in this queue, shared by its workers.
        let ledger: Arc<dyn worker::meter::Ledger> =
            Arc::new(worker::meter::QueueLedger(queue.clone()));
        let services = Arc::new(worker::Services::new(
            config.clone(),
            sandbox.clone(),
            policy.clone(),
            Some(ledger),
            worker::pool::worker_id(),
        )?);
        Ok(Service {
            config,
            webhook_secret,
            github_webhook_secret,
            queue,
            policy,
            sandbox,
            services,
            report,
            reloader,
            purger,
        })
    }

    /// The configuration it runs under (with the bot's identity as Jira gave it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves HTTP on `listener`, polls Jira when `poll.enabled`, and runs jobs from the queue until `shutdown`
    /// resolves; then stops claiming, drains (or releases) the running jobs, empties the warm pool and waits for
    /// the server and the poller. Returns what the worker pool did.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<PoolStats, ServiceError> {
        let Service {
            config,
            webhook_secret,
            github_webhook_secret,
            queue,
            policy,
            sandbox,
            services,
            report,
            reloader,
            purger,
        } = self;
        let pool_owner = sandbox.clone();

        // One signal, three listeners: the HTTP server, the poller and the pool.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await.map(|_| ());
            }
        };

        let addr = listener.local_addr()?;
        let (rq, rs) = (queue.clone(), sandbox.clone());
        let readiness: server::Readiness = Arc::new(move || {
            let (q, sb) = (rq.clone(), rs.clone());
            Box::pin(async move {
                q.ping().await.map_err(|e| format!("queue: {e}"))?;
                sb.ping().await.map_err(|e| format!("docker: {e}"))?;
                Ok(())
            })
        });
        let approvals = server::Approvals {
            policy: policy.clone(),
            directory: Arc::new(JiraClient::new(&config.jira)?),
        };
        // Built before anything is spawned, so that a failure leaves nothing running.
        let poll_jira = if config.poll.enabled {
            Some(JiraClient::new(&config.jira)?)
        } else {
            None
        };
        let state = server::AppState {
            queue: queue.clone(),
            jira: config.jira.clone(),
            webhook_secret,
            max_attempts: config.serve.max_attempts,
            readiness,
            approvals: Some(approvals.clone()),
            github: Some(server::GithubHooks {
                secret: github_webhook_secret,
                bot_login: config.github.bot_login.clone(),
                forge: services.forge.clone(),
                remote_links: config.panel.remote_links,
                identities: config.github.identities.clone(),
            }),
        };
        let http = tokio::spawn(server::serve(listener, state.clone(), stopped()));
        report(&Event::Listening {
            addr,
            webhook_secret: config
                .serve
                .webhook_secret
                .as_ref()
                .and_then(|c| c.origin())
                .cloned(),
            queue: queue.backend(),
            concurrency: config.serve.concurrency,
        });
        // Pull request states (merged, closed, reopened) Jira has not taken yet: told again with backoff, whoever
        // recorded them (a delivery, the poll, another process on the same queue).
        let link_retries = config.panel.remote_links.then(|| {
            let st = state.clone();
            let stop = stopped();
            tokio::spawn(async move {
                let mut stop = std::pin::pin!(stop);
                loop {
                    server::retry_links(&st).await;
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(LINK_RETRY_TICK) => {}
                    }
                }
            })
        });
        let poller = if let Some(jira) = poll_jira {
            let mut poll = config.poll.clone();
            if poll.projects.is_empty() {
                poll.projects = policy.get().projects();
            }
            // Sites without webhooks also need `drafter approve` comments read by polling.
            let (q, a, j, cfg) = (
                queue.clone(),
                approvals.clone(),
                jira.clone(),
                config.clone(),
            );
            let every = Duration::from_secs(config.poll.interval_secs.max(1));
            let stop = stopped();
            tokio::spawn(async move {
                let mut stop = std::pin::pin!(stop);
                loop {
                    crate::intake::poll_approvals(&j, &cfg.jira, q.as_ref(), &a).await;
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            });
            // Review comments on drafter's pull requests, and whether they were merged or closed, for sites GitHub
            // cannot deliver webhooks to.
            if config.github.bot_login.is_some() || config.panel.remote_links {
                let st = state.clone();
                let every = Duration::from_secs(config.poll.interval_secs.max(1));
                let stop = stopped();
                tokio::spawn(async move {
                    let mut stop = std::pin::pin!(stop);
                    let mut refused = std::collections::HashSet::new();
                    loop {
                        server::poll_reviews(&st, &mut refused, 100).await;
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(every) => {}
                        }
                    }
                });
            }
            Some(tokio::spawn(crate::intake::poll_loop(
                jira,
                poll,
                config.jira.clone(),
                queue.clone(),
                config.serve.max_attempts,
                stopped(),
            )))
        } else {
            None
        };

        let signal = {
            let report = report.clone();
            async move {
                shutdown.await;
                report(&Event::Stopping);
                let _ = stop_tx.send(true);
            }
        };
        let stats = worker::pool::run(services, queue, signal).await;
        drop(reloader);
        drop(purger);
        let drained = pool_owner.drain_pool().await;
        if drained > 0 {
            tracing::info!(removed = drained, "warm pool emptied");
        }
        if let Some(p) = poller {
            let _ = p.await;
        }
        if let Some(r) = link_retries {
            let _ = r.await;
        }
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        }
        Ok(stats)
    }
}

/// How often `drafter serve` looks for pull request states to tell Jira again (each has its own backoff).
const LINK_RETRY_TICK: Duration = Duration::from_secs(2);

/// Opens the queue. A worker may start before its database (a host booting, a compose stack): keep trying for a
/// minute, unless the location itself is wrong.
async fn open_queue(location: &str, report: &Report) -> Result<Arc<dyn Queue>, QueueError> {
    let mut wait = Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match crate::queue::open(location).await {
            Ok(q) => return Ok(q),
            Err(e) if Instant::now() < deadline && !matches!(e, QueueError::BadLocation(_)) => {
                report(&Event::QueueNotReady {
                    error: crate::config::redact_url(&e.to_string()),
                    retry_in: wait,
                });
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// On Data Center, completes the bot's identity from `GET /rest/api/2/myself` (see [`jira::adopt_bot_identity`]):
/// assignment webhooks and change history name the assignee by user key, which only Jira knows when the
/// configuration gives the bot's user name alone. Jira being unreachable now is not fatal: the name then stands for
/// the key, which holds for users made before Jira 8.4.
async fn learn_datacenter_bot(config: &mut Config, report: &Report) {
    if config.jira.flavor != JiraFlavor::Datacenter {
        return;
    }
    let me = match JiraClient::new(&config.jira) {
        Ok(client) => client.whoami().await,
        Err(e) => Err(e),
    };
    match me {
        Ok(me) => {
            for w in jira::adopt_bot_identity(&mut config.jira, &me) {
                tracing::warn!("{w}");
                report(&Event::BotIdentityWarning(w));
            }
            tracing::info!(
                bot_username = ?config.jira.bot_username,
                bot_key = %config.jira.bot_account_id,
                "jira: Data Center bot identity"
            );
        }
        Err(e) => tracing::warn!(
            error = %worker::scrub(config, &e.to_string()),
            "cannot read the bot's user key from Jira (GET /rest/api/2/myself); using jira.bot_account_id as configured"
        ),
    }
}

/// SIGHUP re-reads the policy file (with the same signature and pin checks). New jobs get the new policy; running
/// jobs keep the one they started with. A policy that fails the checks is not applied, and the old one stays.
async fn reload_on_sighup(config: Arc<Config>, current: Arc<policy::Current>, report: Report) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        match Policy::load(&config) {
            Ok(p) => {
                let new = p.hash.clone();
                let old = current.set(p);
                tracing::info!(%old, %new, "policy reloaded; new jobs use the new policy");
                report(&Event::PolicyReloaded { old, new });
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; keeping the policy in force");
                report(&Event::PolicyReloadRefused {
                    error: e.to_string(),
                    keeping: current.get().hash.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (Report, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            Arc::new(move |e: &Event| s.lock().unwrap().push(e.clone())),
            seen,
        )
    }

    #[tokio::test]
    async fn a_wrong_queue_location_fails_at_once_without_retrying() {
        let (report, seen) = recorder();
        let err = open_queue("mysql://u:hunter2@db/q", &report)
            .await
            .err()
            .expect("not a queue location");
        assert!(matches!(err, QueueError::BadLocation(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(seen.lock().unwrap().is_empty(), "no retry announced");
    }

    #[tokio::test]
    async fn a_queue_that_opens_is_not_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (report, seen) = recorder();
        let path = dir.path().join("queue.db");
        let queue = open_queue(path.to_str().unwrap(), &report).await.unwrap();
        assert_eq!(queue.backend(), "sqlite");
        assert!(seen.lock().unwrap().is_empty());
    }
}
