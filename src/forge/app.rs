//! GitHub App authentication: a short-lived JWT signed with the App's private key finds the repository's
//! installation and mints **per job** an installation access token narrowed to that one repository and to
//! contents/pull requests write (metadata read), revoked when the job ends.
//!
//! - JWT: RS256, `iat` 60 s in the past (clock skew), `exp` at most 10 minutes ahead, `iss` the App id
//!   (<https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>).
//! - Installation: `GET /repos/{owner}/{repo}/installation`
//!   (<https://docs.github.com/en/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app>).
//! - Token: `POST /app/installations/{id}/access_tokens` with `repository_ids` (or `repositories` by name until
//!   the id is known) and `permissions`; the answer has `token`, `expires_at` (one hour), the granted `permissions`
//!   and `repositories`
//!   (<https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>).
//! - Revocation: `DELETE /installation/token` with the installation token itself, 204
//!   (<https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token>).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{split_repo, ForgeError, GitHub};
use crate::config::{GithubConfig, Secret};

/// The permissions every job token asks for: what clone, push and a draft PR need, nothing more.
pub const JOB_PERMISSIONS: [(&str, &str); 3] = [
    ("contents", "write"),
    ("pull_requests", "write"),
    ("metadata", "read"),
];

/// A token is re-minted when less than this is left of it (a push or a PR must not start on a dying token).
const REMINT_MARGIN_SECS: i64 = 5 * 60;

/// What a job's credential is, for the run statement: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// `github-app` or `personal-token`.
    pub kind: &'static str,
    /// The App's installation (App tokens only).
    pub installation_id: Option<u64>,
    /// The one repository the token is for (App tokens; a personal token's scope is whatever it was given).
    pub repository: Option<String>,
    /// Its numeric id, as GitHub reported it.
    pub repository_id: Option<u64>,
    /// The permissions GitHub granted.
    pub permissions: BTreeMap<String, String>,
    /// When the token expires.
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenGrant {
    fn personal() -> TokenGrant {
        TokenGrant {
            kind: "personal-token",
            installation_id: None,
            repository: None,
            repository_id: None,
            permissions: BTreeMap::new(),
            expires_at: None,
        }
    }
}

/// The App: its id, its signing key, and the repository ids learned from earlier tokens.
pub struct GitHubApp {
    cfg: GithubConfig,
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
    repo_ids: Mutex<HashMap<String, u64>>,
}

impl GitHubApp {
    /// Parses the App's private key (PEM, RSA).
    pub(super) fn new(
        cfg: &GithubConfig,
        app_id: u64,
        pem: &Secret,
    ) -> Result<GitHubApp, ForgeError> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|e| {
                ForgeError::Client {
                    api_url: crate::config::redact_url(&cfg.api_url),
                    message: format!(
                        "github.app_private_key is not an RSA private key in PEM: {e}"
                    ),
                }
            })?;
        Ok(GitHubApp {
            cfg: cfg.clone(),
            app_id,
            key,
            repo_ids: Mutex::new(HashMap::new()),
        })
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A fresh JWT: valid from a minute ago (clocks drift) for nine minutes (GitHub allows at most ten).
    fn jwt(&self) -> Result<Secret, ForgeError> {
        let now = Utc::now().timestamp();
        let claims = json!({"iat": now - 60, "exp": now + 9 * 60, "iss": self.app_id.to_string()});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| ForgeError::Unexpected {
                what: "signing the GitHub App JWT".into(),
                message: e.to_string(),
            })
    }

    /// Finds the installation for `repo` and mints a token for it alone.
    async fn mint(&self, repo: &str) -> Result<(GitHub, TokenGrant), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let as_app = GitHub::with_token(&self.cfg, self.jwt()?)?;
        let installation = as_app
            .get_json(
                &format!("/repos/{owner}/{name}/installation"),
                &format!("finding the GitHub App installation for {repo}"),
            )
            .await?;
        let Some(installation_id) = installation["id"].as_u64() else {
            return Err(ForgeError::Unexpected {
                what: format!("finding the GitHub App installation for {repo}"),
                message: "no installation id in the answer".into(),
            });
        };
        let known_id = self.repo_ids.lock().ok().and_then(|m| m.get(repo).copied());
        let permissions: serde_json::Map<String, Value> = JOB_PERMISSIONS
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let body = match known_id {
            Some(id) => json!({"repository_ids": [id], "permissions": permissions}),
            None => json!({"repositories": [name], "permissions": permissions}),
        };
        let what = format!("minting an installation token for {repo}");
        let answer: Value = as_app
            .octo
            .post(
                format!("/app/installations/{installation_id}/access_tokens"),
                Some(&body),
            )
            .await
            .map_err(|e| as_app.api_error(e, &what))?;
        let unexpected = |message: &str| ForgeError::Unexpected {
            what: what.clone(),
            message: message.into(),
        };
        let token = answer["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unexpected("no token in the answer"))?;
        let expires_at = answer["expires_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| unexpected("no valid expires_at in the answer"))?;
        // The token must be for this repository alone: anything wider is refused (and revoked).
        let repos = answer["repositories"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let permissions: BTreeMap<String, String> = answer["permissions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut client = GitHub::with_token(&self.cfg, Secret::new(token))?;
        client.app_id = Some(self.app_id);
        client.app_permissions = Some(permissions.clone());
        let repository_id = match repos.as_slice() {
            [one]
                if one["full_name"]
                    .as_str()
                    .map(|f| f.eq_ignore_ascii_case(repo))
                    == Some(true) =>
            {
                one["id"].as_u64()
            }
            _ => {
                let _ = client.revoke_installation_token().await;
                return Err(unexpected(
                    "the token is not scoped to exactly this repository",
                ));
            }
        };
        if let (Some(id), Ok(mut ids)) = (repository_id, self.repo_ids.lock()) {
            ids.insert(repo.to_string(), id);
        }
        let grant = TokenGrant {
            kind: "github-app",
            installation_id: Some(installation_id),
            repository: Some(repo.to_string()),
            repository_id,
            permissions,
            expires_at: Some(expires_at),
        };
        Ok((client, grant))
    }
}

impl GitHub {
    /// Revokes the installation token this client authenticates with.
    pub(super) async fn revoke_installation_token(&self) -> Result<(), ForgeError> {
        let what = "revoking the installation token";
        let response = self
            .octo
            ._delete("/installation/token", None::<&()>)
            .await
            .map_err(|e| self.api_error(e, what))?;
        octocrab::map_github_error(response)
            .await
            .map(|_| ())
            .map_err(|e| self.api_error(e, what))
    }
}

/// How the runner authenticates: one personal token for everything, or a GitHub App minting a token per job.
pub enum Forge {
    /// The personal token (or any long-lived token).
    Token(Box<GitHub>),
    /// A GitHub App.
    App(Arc<GitHubApp>),
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forge::Token(_) => f.write_str("Forge::Token"),
            Forge::App(a) => write!(f, "Forge::App({})", a.app_id),
        }
    }
}

impl Forge {
    /// The App when `cfg.app` is set, else the token.
    pub fn new(cfg: &GithubConfig) -> Result<Forge, ForgeError> {
        match &cfg.app {
            Some(app) => {
                let pem = app.private_key.value().map_err(|e| ForgeError::Client {
                    api_url: crate::config::redact_url(&cfg.api_url),
                    message: e.to_string(),
                })?;
                Ok(Forge::App(Arc::new(GitHubApp::new(cfg, app.app_id, pem)?)))
            }
            None => Ok(Forge::Token(Box::new(GitHub::new(cfg)?))),
        }
    }

    /// The credential of one job on `repo`: for an App, a token minted now for that repository alone.
    pub async fn for_job(&self, repo: &str) -> Result<JobForge, ForgeError> {
        match self {
            Forge::Token(gh) => Ok(JobForge {
                mode: Mode::Token(gh.as_ref().clone()),
            }),
            Forge::App(app) => {
                let (client, grant) = app.mint(repo).await?;
                tracing::info!(repo, installation = ?grant.installation_id, expires_at = ?grant.expires_at,
                    "installation token minted");
                Ok(JobForge {
                    mode: Mode::App {
                        app: app.clone(),
                        repo: repo.to_string(),
                        current: tokio::sync::Mutex::new(Some((client, grant))),
                    },
                })
            }
        }
    }

    /// `call` with a credential of its own for `repo` ([`Forge::for_job`]), revoked afterwards whatever `call`
    /// returned: for the reads and comments of the webhook and poll handlers, which belong to no running job.
    pub async fn once<T, F, Fut>(&self, repo: &str, call: F) -> Result<T, ForgeError>
    where
        F: FnOnce(GitHub) -> Fut,
        Fut: std::future::Future<Output = Result<T, ForgeError>>,
    {
        let job = self.for_job(repo).await?;
        let out = match job.client().await {
            Ok(client) => call(client).await,
            Err(e) => Err(e),
        };
        let _ = job.revoke().await;
        out
    }
}

enum Mode {
    Token(GitHub),
    App {
        app: Arc<GitHubApp>,
        repo: String,
        /// The live token; `None` once revoked.
        current: tokio::sync::Mutex<Option<(GitHub, TokenGrant)>>,
    },
}

/// One job's GitHub credential. An App token is re-minted when close to its expiry and revoked by
/// [`JobForge::revoke`] (or, if the job is dropped before, in the background on drop).
pub struct JobForge {
    mode: Mode,
}

impl std::fmt::Debug for JobForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobForge").finish_non_exhaustive()
    }
}

impl JobForge {
    /// A client on a token with at least [`REMINT_MARGIN_SECS`] left (re-minting, and revoking the old token, if
    /// needed).
    pub async fn client(&self) -> Result<GitHub, ForgeError> {
        let (app, repo, current) = match &self.mode {
            Mode::Token(gh) => return Ok(gh.clone()),
            Mode::App { app, repo, current } => (app, repo, current),
        };
        let mut current = current.lock().await;
        let fresh = |g: &TokenGrant| {
            g.expires_at
                .is_some_and(|t| (t - Utc::now()).num_seconds() > REMINT_MARGIN_SECS)
        };
        match current.as_ref() {
            Some((client, grant)) if fresh(grant) => return Ok(client.clone()),
            Some(_) => {}
            None => {
                return Err(ForgeError::Unexpected {
                    what: "using the job's installation token".into(),
                    message: "it was already revoked".into(),
                })
            }
        }
        let (client, grant) = app.mint(repo).await?;
        tracing::info!(repo = %repo, expires_at = ?grant.expires_at, "installation token re-minted before expiry");
        if let Some((old, _)) = current.replace((client.clone(), grant)) {
            if let Err(e) = old.revoke_installation_token().await {
                tracing::warn!(error = %e, "could not revoke the replaced installation token");
            }
        }
        Ok(client)
    }

    /// What the credential is, for the run statement (never the token).
    pub async fn grant(&self) -> TokenGrant {
        match &self.mode {
            Mode::Token(_) => TokenGrant::personal(),
            Mode::App { current, .. } => current
                .lock()
                .await
                .as_ref()
                .map(|(_, g)| g.clone())
                .unwrap_or_else(TokenGrant::personal),
        }
    }

    /// Whether the bypass actor `Integration` with this id is the job's own App (the merge check refuses it).
    pub fn app_id(&self) -> Option<u64> {
        match &self.mode {
            Mode::Token(_) => None,
            Mode::App { app, .. } => Some(app.app_id),
        }
    }

    /// Ends the job's credential: an App token is revoked (a personal token is left alone).
    pub async fn revoke(&self) -> Result<(), ForgeError> {
        let Mode::App { current, .. } = &self.mode else {
            return Ok(());
        };
        let taken = current.lock().await.take();
        match taken {
            Some((client, _)) => client.revoke_installation_token().await,
            None => Ok(()),
        }
    }
}

impl Drop for JobForge {
    /// A job cancelled before [`JobForge::revoke`] still has its token revoked, in the background.
    fn drop(&mut self) {
        let Mode::App { current, .. } = &mut self.mode else {
            return;
        };
        let Some((client, _)) = current.get_mut().take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = client.revoke_installation_token().await {
                    tracing::warn!(error = %e, "could not revoke the installation token of a dropped job");
                }
            });
        }
    }
}
