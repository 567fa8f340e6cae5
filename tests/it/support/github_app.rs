//! The GitHub App side of the GitHub stand-in: JWTs checked with the App's public key, installation tokens scoped
//! to one repository, revocation, and which token may touch what.
//!
//! Shapes from the public docs:
//! - the JWT: RS256, `iat`, `exp` at most 10 minutes after `iat`, `iss` the App (client) id
//!   (https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app)
//! - `GET /repos/{o}/{r}/installation` as the App
//!   (https://docs.github.com/en/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app)
//! - `POST /app/installations/{id}/access_tokens` with `repositories` / `repository_ids` and `permissions`, 201
//!   with `token`, `expires_at`, `permissions`, `repository_selection`, `repositories`
//!   (https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app)
//! - `DELETE /installation/token` with the installation token, 204
//!   (https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token)
//! - an installation token on another repository's endpoints gets 404, on `/user` 403 "Resource not accessible by
//!   integration"; a revoked or expired one 401 "Bad credentials".

use std::collections::HashMap;

use axum::http::Method;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::github::{json_response, Inner};

/// The App as the stand-in knows it.
pub struct AppState {
    pub app_id: u64,
    pub installation_id: u64,
    /// The App's public key (PEM, SPKI): JWTs are checked against it.
    pub public_pem: Vec<u8>,
    pub tokens: HashMap<String, Issued>,
    /// Tokens issued, in order.
    pub issued: Vec<String>,
    pub revocations: usize,
    /// JWTs refused (bad signature, expired, too long-lived, wrong issuer).
    pub refused_jwts: usize,
    /// How long a token lives (GitHub: one hour).
    pub lifetime: chrono::Duration,
    /// Whether ruleset 1 lists the App as a bypass actor.
    pub bypass_actor: bool,
}

/// An installation token the stand-in issued.
pub struct Issued {
    pub repo: String,
    pub permissions: Value,
    pub revoked: bool,
    pub expires_at: DateTime<Utc>,
}

impl AppState {
    pub fn new(app_id: u64, public_pem: &[u8]) -> AppState {
        AppState {
            app_id,
            installation_id: 4242,
            public_pem: public_pem.to_vec(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            revocations: 0,
            refused_jwts: 0,
            lifetime: chrono::Duration::hours(1),
            bypass_actor: false,
        }
    }

    /// The live token `presented` is, if any (not revoked, not expired).
    pub fn live(&self, presented: &str) -> Option<&Issued> {
        self.tokens
            .get(presented)
            .filter(|t| !t.revoked && t.expires_at > Utc::now())
    }

    fn verify_jwt(&self, jwt: &str) -> Result<(), String> {
        let key =
            jsonwebtoken::DecodingKey::from_rsa_pem(&self.public_pem).map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        v.set_issuer(&[self.app_id.to_string()]);
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &v).map_err(|e| e.to_string())?;
        let (iat, exp) = (data.claims["iat"].as_i64(), data.claims["exp"].as_i64());
        match (iat, exp) {
            (Some(iat), Some(exp)) if exp - iat <= 600 && iat <= Utc::now().timestamp() + 60 => {
                Ok(())
            }
            _ => Err("'Expiration time' claim ('exp') is too far in the future".into()),
        }
    }
}

fn bad_credentials(message: &str) -> Response {
    json_response(
        401,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": "401"}),
    )
}

/// The App's own endpoints, or `None` for everything else.
pub fn route(
    st: &mut Inner,
    method: &Method,
    segs: &[&str],
    presented: Option<&str>,
    body: &[u8],
) -> Option<Response> {
    let app = st.app.as_mut()?;
    let presented = presented.unwrap_or("");
    match (method.clone(), segs) {
        (Method::DELETE, ["installation", "token"]) => {
            let Some(t) = app.tokens.get_mut(presented).filter(|t| !t.revoked) else {
                return Some(bad_credentials("Bad credentials"));
            };
            t.revoked = true;
            app.revocations += 1;
            Some(json_response(204, Value::Null))
        }
        (Method::GET, ["repos", o, r, "installation"]) => {
            if let Err(e) = app.verify_jwt(presented) {
                app.refused_jwts += 1;
                return Some(bad_credentials(&format!(
                    "A JSON web token could not be decoded: {e}"
                )));
            }
            let full = format!("{o}/{r}");
            if !st.repos.contains_key(&full) {
                return Some(json_response(404, json!({"message": "Not Found"})));
            }
            let app = st.app.as_ref()?;
            Some(json_response(
                200,
                json!({"id": app.installation_id, "app_id": app.app_id, "target_type": "Organization",
                       "account": {"login": o}, "repository_selection": "all"}),
            ))
        }
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if let Err(e) = app.verify_jwt(presented) {
                app.refused_jwts += 1;
                return Some(bad_credentials(&format!(
                    "A JSON web token could not be decoded: {e}"
                )));
            }
            if *id != app.installation_id.to_string() {
                return Some(json_response(404, json!({"message": "Not Found"})));
            }
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            // Exactly one repository, by name or by id: the stand-in refuses a token for the whole installation.
            let by_name = req["repositories"]
                .as_array()
                .and_then(|a| match a.as_slice() {
                    [one] => one.as_str().map(str::to_string),
                    _ => None,
                });
            let by_id = req["repository_ids"]
                .as_array()
                .and_then(|a| match a.as_slice() {
                    [one] => one.as_u64(),
                    _ => None,
                });
            // The App is installed on the organization: the service account's forks are not in the installation.
            let full = st.repos.iter().find_map(|(full, r)| {
                let name = full.split('/').nth(1).unwrap_or("");
                (r.fork_of.is_none() && (by_name.as_deref() == Some(name) || by_id == Some(r.id)))
                    .then(|| (full.clone(), r.id))
            });
            let Some((full, repo_id)) = full else {
                return Some(json_response(
                    422,
                    json!({"message": "There is at least one repository that does not exist or is not accessible to the parent installation."}),
                ));
            };
            let app = st.app.as_mut()?;
            let token = format!(
                "ghs_stand_in_{}_{}",
                app.issued.len() + 1,
                full.replace('/', "_")
            );
            let expires_at = Utc::now() + app.lifetime;
            let permissions = req["permissions"].clone();
            app.tokens.insert(
                token.clone(),
                Issued {
                    repo: full.clone(),
                    permissions: permissions.clone(),
                    revoked: false,
                    expires_at,
                },
            );
            app.issued.push(token.clone());
            Some(json_response(
                201,
                json!({"token": token, "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                       "permissions": permissions, "repository_selection": "selected",
                       "repositories": [{"id": repo_id, "full_name": full, "name": full.split('/').nth(1)}]}),
            ))
        }
        _ => None,
    }
}

/// The answer refusing `presented` on the REST path `segs`, or `None` when it may act there.
pub fn refusal(app: &AppState, presented: &str, segs: &[&str]) -> Option<Response> {
    let Some(t) = app.live(presented) else {
        return Some(bad_credentials("Bad credentials"));
    };
    match segs {
        ["repos", o, r, ..] if t.repo == format!("{o}/{r}") => None,
        ["repos", ..] => Some(json_response(404, json!({"message": "Not Found"}))),
        _ => Some(json_response(
            403,
            json!({"message": "Resource not accessible by integration"}),
        )),
    }
}

/// Whether `presented` is a live installation token for the repository of the git path `/{o}/{r}.git/...`.
pub fn allows_git(app: &AppState, presented: &str, path: &str) -> bool {
    let repo = path
        .trim_start_matches('/')
        .split(".git/")
        .next()
        .unwrap_or("");
    app.live(presented).is_some_and(|t| t.repo == repo)
}

/// The test App's id.
pub const APP_ID: u64 = 31337;

/// A fresh RSA key pair for the test App, made with `openssl`: the private key's path (PEM, what the runner
/// reads) and the public key (SPKI PEM, what the stand-in checks JWTs with).
pub fn key_pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let private = dir.join(format!("{name}.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl genrsa");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl rsa -pubout");
    (private, out.stdout)
}
