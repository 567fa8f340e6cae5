//! Secrets by reference: where a configured secret lives ([`SecretRef`]), its value once read ([`Secret`],
//! never printable), the two together as the configuration holds them ([`Credential`]), and [`redact_url`] for
//! anything shown.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, Problem};

/// A secret value. `Debug` and `Display` never show it; call [`Secret::expose`] at the one place it is used.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value (tests and stand-ins; the product reads secrets through [`Config::load_for`]).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the single call site that sends it (an auth header, a git credential callback).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a configured secret comes from: the key naming it, its line, and the environment variable or file. Holds
/// no value; [`SecretRef::resolve`] reads it.
#[derive(Debug, Clone)]
pub struct SecretRef {
    /// The configuration file, for messages.
    pub(super) file: PathBuf,
    /// The dotted key, e.g. `github.token_env`.
    pub(super) key: String,
    /// Its 1-based line.
    pub(super) line: Option<usize>,
    /// The variable or the file holding the value.
    pub(super) source: SecretSource,
}

/// The two places a secret may live.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable, by name (`*_env`).
    Env(String),
    /// A file, by path (`*_file`): a systemd credential, a mounted Kubernetes secret.
    File(PathBuf),
}

impl SecretRef {
    /// The dotted key naming this secret (`serve.webhook_secret_env`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its line in the configuration file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Reads the value now (trimmed; empty counts as unset). The error names the key, the line and the variable or
    /// file, never a value.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
        self.read(env).map_err(|p| p.into_error(&self.file))
    }

    pub(super) fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, Problem> {
        // Webhooks are on exactly when their secret is configured: say how to have them off.
        let hint = if self.key.starts_with("serve.webhook_secret") {
            format!(
                "; webhooks are on because `{}` is set: give `drafter serve` the secret, or remove the key to run \
                 without webhooks (polling only)",
                self.key
            )
        } else {
            String::new()
        };
        let fail =
            |message: String| Problem::new(Some(self.key.clone()), self.line, message + &hint);
        match &self.source {
            SecretSource::Env(var) => match env(var) {
                Some(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim().to_string())),
                _ => Err(fail(format!(
                    "environment variable `{var}` is not set or empty"
                ))),
            },
            SecretSource::File(path) => {
                let value = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read `{}`: {e}", path.display())))?;
                if value.trim().is_empty() {
                    return Err(fail(format!("`{}` is empty", path.display())));
                }
                Ok(Secret::new(value.trim().to_string()))
            }
        }
    }
}

/// A secret in the loaded configuration: where it comes from and, once the command that uses it has resolved it,
/// its value. [`Config::load_for`] resolves exactly the secrets its purpose uses, at start-up, so a command never
/// reads a secret it does not use and never finds one missing half-way through a job.
#[derive(Clone)]
pub struct Credential {
    pub(super) origin: Option<SecretRef>,
    pub(super) value: Option<Secret>,
}

impl Credential {
    /// The value, if this command resolved it. The error names the key and line of a secret that was not read
    /// (a command using a secret its purpose does not list: a bug, reported rather than sent as an empty token).
    pub fn value(&self) -> Result<&Secret, ConfigError> {
        match (&self.value, &self.origin) {
            (Some(v), _) => Ok(v),
            (None, Some(r)) => Err(ConfigError::NotRead {
                key: r.key.clone(),
                line: r.line,
            }),
            (None, None) => Err(ConfigError::NotRead {
                key: "(unnamed secret)".into(),
                line: None,
            }),
        }
    }

    /// Where it comes from, for a secret read from the configuration.
    pub fn origin(&self) -> Option<&SecretRef> {
        self.origin.as_ref()
    }

    /// No secret: a credential whose configuration has a problem (which stops every command that would use it).
    pub(super) fn missing() -> Credential {
        Credential {
            origin: None,
            value: None,
        }
    }

    pub(super) fn unread(origin: SecretRef) -> Credential {
        Credential {
            origin: Some(origin),
            value: None,
        }
    }

    /// Reads the value unless already read.
    pub(super) fn resolve(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Problem> {
        if self.value.is_none() {
            if let Some(origin) = &self.origin {
                self.value = Some(origin.read(env)?);
            }
        }
        Ok(())
    }
}

impl From<Secret> for Credential {
    /// A value given directly (tests and stand-ins).
    fn from(value: Secret) -> Credential {
        Credential {
            origin: None,
            value: Some(value),
        }
    }
}

impl fmt::Debug for Credential {
    /// `[redacted]` once read; before that, where it would come from (a variable's name or a path is no secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.value, &self.origin) {
            (Some(_), _) => f.write_str("[redacted]"),
            (None, Some(r)) => {
                match &r.source {
                    SecretSource::Env(var) => write!(f, "not read: environment variable {var}")?,
                    SecretSource::File(p) => write!(f, "not read: file {}", p.display())?,
                }
                match r.line {
                    Some(l) => write!(f, " (`{}`, line {l})", r.key),
                    None => write!(f, " (`{}`)", r.key),
                }
            }
            (None, None) => f.write_str("none"),
        }
    }
}

/// `text` with credentials cut out of every URL in it, for display: the userinfo of `scheme://user:password@host`
/// becomes `***`, and so does the value of a query parameter whose name mentions a password, secret or token
/// (`?password=...`). Works on a bare URL, a mistyped one (`postgress://...`), or a message quoting URLs. Everything
/// else is kept, so the operator still sees which host and database were meant.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // A URL runs to the next blank or quoting character.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        // The last `@`: a password typed with an unescaped `@`, `/` or `?` in it must not leak its tail.
        let url = match url.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &url[at..]
            }
            None => url,
        };
        match url.split_once('?') {
            Some((base, query)) => {
                out.push_str(base);
                out.push('?');
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                        _ => p.to_string(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|w| n.contains(w))
}
