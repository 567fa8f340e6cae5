//! Runner configuration: one TOML file, a few environment overrides, secrets by reference.
//!
//! Why secrets are references: the file is meant to be committed to a platform team's config repo or baked into a
//! container image, so it names *where* a secret lives (`token_env = "GITHUB_TOKEN"` or `token_file = "/run/..."`)
//! and never holds the value. Values are read once, here, into [`Secret`], whose `Debug` prints `[redacted]` and
//! which is not `Serialize`: nothing else in the crate reads secrets from the environment.
//!
//! Errors name the file, the key and, where the TOML parser or a span knows it, the line.
//!
//! Here: the errors and the loader (`Config::load_for`, `Config::check`). `sections.rs` holds the types per section,
//! `secret.rs` the secrets and `redact_url`, `raw.rs` the file as written and the environment overrides, `build.rs`
//! the checks from one to the other, `load.rs` the lenient parse and `Purpose`.

use std::path::{Path, PathBuf};

mod build;
mod load;
mod raw;
mod secret;
mod sections;

use build::parse;
pub use load::{Problem, Purpose};
pub use raw::{ENV_OVERRIDES, MAX_CRITERIA_FIELDS};
pub use secret::{redact_url, Credential, Secret, SecretRef, SecretSource};
pub use sections::*;

/// Why loading the configuration failed. Every variant names the file; most name a key and a line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed (the message comes from the TOML parser, with the line), or a problem names no key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value parsed but is not acceptable (an unset secret variable, an empty allowlist, a bad URL).
    #[error("config file {path}{}: `{key}`: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the offending key, when known.
        line: Option<usize>,
        /// The dotted key, e.g. `github.token_env`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Several problems stop the command: each with its key and line.
    #[error("config file {path}: {} problems stop `drafter {}`:{}", problems.len(), purpose.label(),
        problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Problems {
        /// The file.
        path: PathBuf,
        /// What the command needed the file for.
        purpose: Purpose,
        /// Every problem that stops it.
        problems: Vec<Problem>,
    },
    /// A command used a secret it did not resolve at start-up.
    #[error("`{key}`{} was not read at start-up: this command does not resolve it (a bug in drafter)",
        line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    NotRead {
        /// The dotted key naming the secret.
        key: String,
        /// Its line.
        line: Option<usize>,
    },
}

impl Problem {
    /// This problem as an error about `path`.
    fn into_error(self, path: &Path) -> ConfigError {
        match self.key {
            Some(key) => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: self.line,
                key,
                message: self.message,
            },
            None => ConfigError::Parse {
                path: path.to_path_buf(),
                message: match self.line {
                    Some(l) => format!("line {l}: {}", self.message),
                    None => self.message,
                },
            },
        }
    }
}

impl ConfigError {
    /// One problem as itself, several as a list.
    fn from_problems(path: &Path, purpose: Purpose, mut problems: Vec<Problem>) -> ConfigError {
        if problems.len() == 1 {
            if let Some(p) = problems.pop() {
                return p.into_error(path);
            }
        }
        ConfigError::Problems {
            path: path.to_path_buf(),
            purpose,
            problems,
        }
    }
}

/// What [`Config::check`] found: every problem in the file (each with its key, line and the commands it stops), and
/// the configuration as far as it could be read, for showing.
pub struct Checked {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
    config: Option<Config>,
}

impl Checked {
    /// The configuration with URL credentials cut out and secrets not read (they show where they come from), or
    /// `None` when the file is not TOML at all. A part with a problem holds its defaults.
    pub fn display(&self) -> Option<Config> {
        self.config.as_ref().map(Config::for_display)
    }

    /// The problems that stop commands of `purpose`.
    pub fn blocking(&self, purpose: Purpose) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.blocks(purpose))
    }
}

/// The file read as far as it goes: the configuration (secrets not read) unless the file is not TOML at all, and
/// every problem found.
struct Parsed {
    config: Option<Config>,
    problems: Vec<Problem>,
}

impl Config {
    /// A copy for showing (`drafter check-config`): every URL with its credentials cut out ([`redact_url`]); the
    /// secrets are hidden by their own `Debug`.
    pub fn for_display(&self) -> Config {
        let mut c = self.clone();
        for url in [
            &mut c.serve.queue,
            &mut c.jira.base_url,
            &mut c.github.api_url,
            &mut c.github.git_url,
            &mut c.model.base_url,
        ] {
            *url = redact_url(url);
        }
        c
    }

    /// Reads `path` for a command of `purpose`: parses and validates it, applies [`ENV_OVERRIDES`], and resolves
    /// the secrets that purpose uses. Problems in parts of the file the purpose does not read do not stop it; every
    /// problem that does is in the error, with its key and line.
    pub fn load_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml_for(&text, path, &|name| std::env::var(name).ok(), purpose)
    }

    /// Parses `text` (as if read from `path`) for everything ([`Purpose::Serve`]), looking environment variables up
    /// through `env`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_for(text, path, env, Purpose::Serve)
    }

    /// Parses `text` (as if read from `path`) for a command of `purpose`; see [`Config::load_for`].
    pub fn from_toml_for(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        purpose: Purpose,
    ) -> Result<Config, ConfigError> {
        let Parsed {
            config,
            mut problems,
        } = parse(text, path, env);
        problems.retain(|p| p.blocks(purpose));
        let mut config = match config {
            Some(c) if problems.is_empty() => c,
            _ => return Err(ConfigError::from_problems(path, purpose, problems)),
        };
        // Read once, now: a job never finds a secret missing half-way.
        for (parts, credential) in config.credentials_mut() {
            if purpose.needs().intersects(parts) {
                if let Err(p) = credential.resolve(env) {
                    problems.push(p);
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::from_problems(path, purpose, problems));
        }
        Ok(config)
    }

    /// Every problem in `text` at once, for `drafter check-config`: what does not parse, what is not acceptable, and
    /// every configured secret that cannot be read here. Values read to check them are dropped at once.
    pub fn check(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Checked {
        let Parsed {
            config,
            mut problems,
        } = parse(text, path, env);
        if let Some(c) = &config {
            for (_, credential) in c.credentials() {
                if let Some(origin) = credential.origin() {
                    if let Err(p) = origin.read(env) {
                        problems.push(p);
                    }
                }
            }
        }
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Checked { problems, config }
    }

    /// [`Config::check`] on a file, with the process environment.
    pub fn check_file(path: &Path) -> Result<Checked, ConfigError> {
        let text = read_file(path)?;
        Ok(Self::check(&text, path, &|name| std::env::var(name).ok()))
    }

    /// Where webhooks stand: on when `serve.webhook_secret_env` or `_file` is set (then `drafter serve` needs the
    /// secret), off otherwise (the endpoint refuses everything; jobs come from polling or operators).
    pub fn webhooks_on(&self) -> bool {
        self.serve.webhook_secret.is_some()
    }

    /// The allowlisted repositories for a Jira project key, if the project is allowlisted at all.
    pub fn project(&self, key: &str) -> Option<&ProjectConfig> {
        self.projects.get(key)
    }

    /// Every secret of the configuration with the parts it belongs to.
    fn credentials(&self) -> Vec<(load::Parts, &Credential)> {
        let mut out = vec![
            (load::Parts::JIRA, self.jira.auth.secret()),
            (load::Parts::GITHUB_TOKEN, &self.github.token),
        ];
        if let Some(app) = &self.github.app {
            out.push((load::Parts::GITHUB_TOKEN, &app.private_key));
        }
        if let Some(k) = &self.model.api_key {
            out.push((load::Parts::MODEL_KEY, k));
        }
        if let Some(s) = &self.serve.webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        if let Some(s) = &self.serve.github_webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        out
    }

    fn credentials_mut(&mut self) -> Vec<(load::Parts, &mut Credential)> {
        let mut out = vec![
            (load::Parts::JIRA, self.jira.auth.secret_mut()),
            (load::Parts::GITHUB_TOKEN, &mut self.github.token),
        ];
        if let Some(app) = &mut self.github.app {
            out.push((load::Parts::GITHUB_TOKEN, &mut app.private_key));
        }
        if let Some(k) = &mut self.model.api_key {
            out.push((load::Parts::MODEL_KEY, k));
        }
        if let Some(s) = &mut self.serve.webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        if let Some(s) = &mut self.serve.github_webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        out
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}
/// `owner/name` with GitHub's allowed characters; refuses anything that could escape a URL path.
pub fn valid_repo_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(n), None) if ok(o) && ok(n))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_data_center;
#[cfg(test)]
mod tests_per_command;
