//! [`Services`]: what every job of a process shares, built once (`drafter run` for its one job, `drafter serve` for
//! all of its pool's jobs) instead of once per job.

use std::sync::Arc;

use crate::config::{Config, ModelConfig};
use crate::forge::Forge;
use crate::jira::JiraClient;
use crate::model::{ModelClient, ModelError};
use crate::policy;
use crate::proof::{BundleWriter, ProofError, RunnerKey};
use crate::sandbox::Sandbox;

use super::meter::Ledger;
use super::slots::RepoSlots;

/// Makes each job's model client (a client records into its job's bundle, so it is one per job).
#[derive(Debug, Clone)]
pub struct ModelFactory {
    cfg: ModelConfig,
    /// One HTTP client for every job (built on first use): a client per job parsed the system's root certificates
    /// and opened new connections every time.
    http: std::sync::OnceLock<reqwest::Client>,
}

impl ModelFactory {
    /// A factory for the configured model.
    pub fn new(cfg: &ModelConfig) -> ModelFactory {
        ModelFactory {
            cfg: cfg.clone(),
            http: std::sync::OnceLock::new(),
        }
    }

    /// A client recording into `bundle`.
    pub fn client(&self, bundle: BundleWriter) -> Result<ModelClient, ModelError> {
        let http = match self.http.get() {
            Some(h) => h.clone(),
            None => {
                let h = crate::model::http_client(&self.cfg)?;
                self.http.get_or_init(|| h).clone()
            }
        };
        ModelClient::with_http(&self.cfg, bundle, http)
    }
}

/// The long-lived things a job runs over: clients, the sandbox engine (with its warm pool), the policy in force, the
/// runner key, where budgets are counted, and this worker's id.
pub struct Services {
    /// The runner's configuration.
    pub config: Arc<Config>,
    /// Jira, as the bot (its group cache is shared by every job).
    pub jira: JiraClient,
    /// The forge: the service account's token, or the GitHub App that mints a token per job.
    pub forge: Arc<Forge>,
    /// The Docker engine with the runner's sandbox settings; each job narrows them to its policy's limits.
    pub sandbox: Arc<Sandbox>,
    /// Each job's model client.
    pub models: ModelFactory,
    /// The policy new jobs get (`drafter serve` reloads it on SIGHUP; a job keeps the one it started with).
    pub policy: Arc<policy::Current>,
    /// Where team budgets are counted (the queue database), if anywhere.
    pub ledger: Option<Arc<dyn Ledger>>,
    /// This process's per-repository slots (`concurrency.repo`).
    pub slots: Arc<RepoSlots>,
    /// Who runs the jobs: under `drafter serve` the pool's id, which is the queue's lease owner; the run statement
    /// records it.
    pub worker_id: String,
}

/// Why the services could not be built (before any job runs).
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The Jira client.
    #[error("jira: {0}")]
    Jira(#[from] crate::jira::JiraError),
    /// The forge client.
    #[error("github: {0}")]
    Forge(#[from] crate::forge::ForgeError),
    /// The runner key.
    #[error("runner key: {0}")]
    Key(#[from] ProofError),
}

impl Services {
    /// Builds the clients; loads (or makes) the runner key, so an unusable key stops the process before any job.
    pub fn new(
        config: Arc<Config>,
        sandbox: Arc<Sandbox>,
        policy: Arc<policy::Current>,
        ledger: Option<Arc<dyn Ledger>>,
        worker_id: String,
    ) -> Result<Services, ServicesError> {
        RunnerKey::load_or_create(&config.data_dir)?;
        Ok(Services {
            jira: JiraClient::new(&config.jira)?,
            forge: Arc::new(Forge::new(&config.github)?),
            models: ModelFactory::new(&config.model),
            slots: Arc::new(RepoSlots::default()),
            config,
            sandbox,
            policy,
            ledger,
            worker_id,
        })
    }
}

impl Services {
    /// The runner key as it is on disk now, read once per job: `drafter key rotate` on a running `drafter serve`
    /// takes effect from the next job (a rotated-out key may be one the operator no longer trusts).
    pub fn current_key(&self) -> Result<Arc<RunnerKey>, ProofError> {
        RunnerKey::load_or_create(&self.config.data_dir).map(Arc::new)
    }
}

/// Identities and group membership for the policy's trigger and approver rules, from Jira (cached by the client).
#[async_trait::async_trait]
impl policy::Directory for JiraClient {
    async fn groups(&self, account: &str) -> Result<Vec<String>, policy::DirectoryError> {
        self.user_groups(account).await.map_err(directory_error)
    }

    async fn identities(&self, account: &str) -> Result<Vec<String>, policy::DirectoryError> {
        JiraClient::identities(self, account)
            .await
            .map_err(directory_error)
    }

    fn same_identity(&self, listed: &str, account: &str) -> bool {
        self.dialect().same_user(listed, account)
    }
}

/// Keeps whether Jira's failure was a passing one.
fn directory_error(e: crate::jira::JiraError) -> policy::DirectoryError {
    policy::DirectoryError {
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}
