//! How a configuration file becomes problems and a [`super::Config`]: the file is parsed with spans, every key that
//! fails is reported (key, line, what is wrong) and dropped so the rest can still be read, and each problem knows
//! which parts of the configuration it concerns, hence which commands it stops.
//!
//! Why not stop at the first error: an operator fixing a file wants every problem at once (`drafter check-config`),
//! and a command should not be stopped by a part of the file it never reads (`drafter jobs list` needs the queue,
//! not the model's API key).

use std::fmt;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

/// What a configuration problem concerns. A problem stops every [`Purpose`] that needs one of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parts(u16);

impl Parts {
    pub(super) const DATA_DIR: Parts = Parts(1);
    pub(super) const JIRA: Parts = Parts(1 << 1);
    pub(super) const GITHUB: Parts = Parts(1 << 2);
    pub(super) const GITHUB_TOKEN: Parts = Parts(1 << 3);
    pub(super) const MODEL: Parts = Parts(1 << 4);
    pub(super) const MODEL_KEY: Parts = Parts(1 << 5);
    pub(super) const AGENT: Parts = Parts(1 << 6);
    pub(super) const SANDBOX: Parts = Parts(1 << 7);
    pub(super) const COMMIT: Parts = Parts(1 << 8);
    /// `[projects]` and `[policy]`: what may be touched and under which rules.
    pub(super) const PROJECTS: Parts = Parts(1 << 9);
    pub(super) const QUEUE: Parts = Parts(1 << 10);
    /// `[serve]` apart from the queue and the webhook secret.
    pub(super) const SERVE: Parts = Parts(1 << 11);
    pub(super) const WEBHOOKS: Parts = Parts(1 << 12);
    pub(super) const POLL: Parts = Parts(1 << 13);
    /// The whole file (a syntax error, an unknown table).
    pub(super) const ALL: Parts = Parts((1 << 14) - 1);

    const fn or(self, other: Parts) -> Parts {
        Parts(self.0 | other.0)
    }

    pub(super) fn intersects(self, other: Parts) -> bool {
        self.0 & other.0 != 0
    }

    fn without(self, other: Parts) -> Parts {
        Parts(self.0 & !other.0)
    }

    /// The parts a dotted key belongs to (`serve.webhook_secret_env` -> webhooks). A whole table counts for all of
    /// its parts; a key drafter does not know counts for everything, since it may be a typo of anything.
    pub(super) fn of_key(key: &str) -> Parts {
        let mut segs = key.split(['.', '[']);
        let top = segs.next().unwrap_or("");
        let second = segs.next();
        match (top, second) {
            ("data_dir", None) => Parts::DATA_DIR,
            ("jira", _) => Parts::JIRA,
            (
                "github",
                Some("token_env" | "token_file" | "app_private_key_env" | "app_private_key_file"),
            ) => Parts::GITHUB_TOKEN,
            ("github", Some(_)) => Parts::GITHUB,
            ("github", None) => Parts::GITHUB.or(Parts::GITHUB_TOKEN),
            ("model", Some("api_key_env" | "api_key_file")) => Parts::MODEL_KEY,
            ("model", Some(_)) => Parts::MODEL,
            ("model", None) => Parts::MODEL.or(Parts::MODEL_KEY),
            ("agent", _) => Parts::AGENT,
            ("sandbox", _) => Parts::SANDBOX,
            ("commit", _) => Parts::COMMIT,
            ("projects" | "policy", _) => Parts::PROJECTS,
            ("serve", Some("queue")) => Parts::QUEUE,
            (
                "serve",
                Some(
                    "webhook_secret_env"
                    | "webhook_secret_file"
                    | "github_webhook_secret_env"
                    | "github_webhook_secret_file",
                ),
            ) => Parts::WEBHOOKS,
            ("serve", Some(_)) => Parts::SERVE,
            ("serve", None) => Parts::QUEUE.or(Parts::SERVE).or(Parts::WEBHOOKS),
            ("poll", _) => Parts::POLL,
            // Only the commands that clone (run, serve) read it.
            ("repo", _) => Parts::GITHUB,
            _ => Parts::ALL,
        }
    }
}

/// What a command reads from the configuration. Each command loads the file for its purpose
/// ([`super::Config::load_for`]): problems elsewhere in the file do not stop it, and it resolves only the secrets it
/// uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `drafter run`: Jira, GitHub, the model, the sandbox, the allowlist or policy, the data directory, and the
    /// queue database when team budgets are counted there.
    Run,
    /// `drafter serve`: everything `run` needs, the `[serve]` and `[poll]` settings, and the webhook secret when one
    /// is configured (webhooks are on exactly when `serve.webhook_secret_env` or `_file` is set).
    Serve,
    /// `drafter policy explain`: Jira (to read the ticket), the policy, the limits and the queue (budgets left).
    Explain,
    /// `drafter jobs`, `pause`, `resume`: the queue only.
    Queue,
    /// `drafter key`, `jobs bundle`, `jobs purge`: the data directory only.
    DataDir,
    /// `drafter doctor`, `bench`: the sandbox settings only.
    Sandbox,
}

impl Purpose {
    /// Every purpose, in the order `check-config` lists them.
    pub const ALL: [Purpose; 6] = [
        Purpose::Run,
        Purpose::Serve,
        Purpose::Explain,
        Purpose::Queue,
        Purpose::DataDir,
        Purpose::Sandbox,
    ];

    /// The commands this purpose stands for, as `check-config` names them.
    pub fn label(self) -> &'static str {
        match self {
            Purpose::Run => "run",
            Purpose::Serve => "serve",
            Purpose::Explain => "policy explain",
            Purpose::Queue => "jobs, pause, resume",
            Purpose::DataDir => "key, jobs bundle, jobs purge",
            Purpose::Sandbox => "doctor, bench",
        }
    }

    pub(super) fn needs(self) -> Parts {
        let run = Parts::DATA_DIR
            .or(Parts::JIRA)
            .or(Parts::GITHUB)
            .or(Parts::GITHUB_TOKEN)
            .or(Parts::MODEL)
            .or(Parts::MODEL_KEY)
            .or(Parts::AGENT)
            .or(Parts::SANDBOX)
            .or(Parts::COMMIT)
            .or(Parts::PROJECTS)
            .or(Parts::QUEUE);
        match self {
            Purpose::Run => run,
            Purpose::Serve => Parts::ALL,
            // The queue's default location is under the data directory.
            Purpose::Explain => Parts::JIRA
                .or(Parts::MODEL)
                .or(Parts::AGENT)
                .or(Parts::SANDBOX)
                .or(Parts::PROJECTS)
                .or(Parts::QUEUE)
                .or(Parts::DATA_DIR),
            Purpose::Queue => Parts::QUEUE.or(Parts::DATA_DIR),
            Purpose::DataDir => Parts::DATA_DIR,
            Purpose::Sandbox => Parts::SANDBOX,
        }
    }
}

/// One thing wrong with a configuration file: its key and line when known, what is wrong, and what it stops.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The dotted key (`serve.webhook_secret_env`, `projects.PAY.repos[1].name`), when the problem is one key's.
    pub key: Option<String>,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it. Never holds a secret value.
    pub message: String,
    pub(super) parts: Parts,
}

impl Problem {
    pub(super) fn new(key: Option<String>, line: Option<usize>, message: String) -> Problem {
        let parts = key.as_deref().map_or(Parts::ALL, Parts::of_key);
        Problem {
            key,
            line,
            message,
            parts,
        }
    }

    /// Whether this problem stops commands of `purpose`.
    pub fn blocks(&self, purpose: Purpose) -> bool {
        purpose.needs().intersects(self.parts)
    }

    /// The commands this problem stops, e.g. `["run", "serve", "policy explain"]`, or `["serve (webhooks)"]` for a
    /// problem only `drafter serve`'s webhooks have.
    pub fn blocked(&self) -> Vec<&'static str> {
        Purpose::ALL
            .iter()
            .filter(|p| self.blocks(**p))
            .map(|p| {
                if *p == Purpose::Serve && self.parts.without(Parts::WEBHOOKS) == Parts(0) {
                    "serve (webhooks)"
                } else {
                    p.label()
                }
            })
            .collect()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Line numbers of a text by byte offset.
pub(super) struct Lines<'a>(pub(super) &'a str);

impl Lines<'_> {
    /// The 1-based line holding byte `offset`.
    pub(super) fn at(&self, offset: usize) -> usize {
        let text = self.0;
        let end = offset.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

/// The deepest key whose name or value holds byte `at`.
fn key_path(table: &DeTable<'_>, at: usize) -> Vec<Seg> {
    for (k, v) in table.iter() {
        if k.span().contains(&at) {
            return vec![Seg::Key(k.get_ref().to_string())];
        }
        let inner = value_path(v, at);
        if !inner.is_empty() || v.span().contains(&at) {
            let mut path = vec![Seg::Key(k.get_ref().to_string())];
            path.extend(inner);
            return path;
        }
    }
    Vec::new()
}

fn value_path(v: &Spanned<DeValue<'_>>, at: usize) -> Vec<Seg> {
    match v.get_ref() {
        DeValue::Table(t) => key_path(t, at),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                let inner = value_path(e, at);
                if !inner.is_empty() || e.span().contains(&at) {
                    let mut path = vec![Seg::Index(i)];
                    path.extend(inner);
                    return path;
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// Removes the key `path` ends in (after its last key segment), so that a retry reads the rest.
fn remove_key(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Key(k)] => table.remove(k.as_str()).is_some(),
        [Seg::Key(k), rest @ ..] => match table.get_mut(k.as_str()) {
            Some(v) => remove_in(v.get_mut(), rest),
            None => false,
        },
        _ => false,
    }
}

fn remove_in(v: &mut DeValue<'_>, path: &[Seg]) -> bool {
    match (v, path.first()) {
        (DeValue::Table(t), Some(Seg::Key(_))) => remove_key(t, path),
        (DeValue::Array(a), Some(Seg::Index(i))) => match a.get_mut(*i) {
            Some(e) => remove_in(e.get_mut(), &path[1..]),
            None => false,
        },
        _ => false,
    }
}

/// Deserializes `T` from `table`, reporting each key that fails (its dotted key, line and the parser's message)
/// and dropping it before trying again, so one bad key neither hides the next nor stops the parts of the file that
/// are fine. A dropped key gets its default; a required one takes its whole table with it, which then reads as
/// absent. `None` when the document itself cannot be read.
pub(super) fn deserialize_lenient<T: DeserializeOwned>(
    table: &Spanned<DeTable<'_>>,
    lines: &Lines<'_>,
) -> (Option<T>, Vec<Problem>) {
    let mut table = table.clone();
    let mut problems: Vec<Problem> = Vec::new();
    // Each round drops one key; a file has far fewer.
    for _ in 0..500 {
        let err = match T::deserialize(Deserializer::from(table.clone())) {
            Ok(v) => return (Some(v), problems),
            Err(e) => e,
        };
        let at = err.span().map(|s| s.start);
        let mut path = at
            .map(|at| key_path(table.get_ref(), at))
            .unwrap_or_default();
        let message = err.message().trim().to_string();
        // "missing field `x`" points at the table missing it.
        let (key, message) = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            Some(field) => {
                let table_key = dotted(&path);
                let key = if table_key.is_empty() {
                    field.to_string()
                } else {
                    format!("{table_key}.{field}")
                };
                (key, "is required but missing".to_string())
            }
            None => (dotted(&path), message),
        };
        // A key dropped for a bad value then reads as missing: that is the same problem, said once.
        if !problems
            .iter()
            .any(|p| p.key.as_deref() == Some(key.as_str()))
        {
            let key = (!key.is_empty()).then_some(key);
            problems.push(Problem::new(key, at.map(|a| lines.at(a)), message));
        }
        // Drop the innermost key holding the error (an array element's failure drops the whole array's key).
        if let Some(last) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) {
            path.truncate(last + 1);
        } else {
            path.clear();
        }
        if path.is_empty() || !remove_key(table.get_mut(), &path) {
            return (None, problems);
        }
    }
    (None, problems)
}

/// The line of the deepest existing key along the dotted `key` (a missing key's table header), if any.
pub(super) fn line_of(table: &DeTable<'_>, key: &str, lines: &Lines<'_>) -> Option<usize> {
    let mut current = table;
    let mut found = None;
    for seg in key.split('.') {
        let Some((k, v)) = current.iter().find(|(k, _)| k.get_ref() == seg) else {
            break;
        };
        found = Some(lines.at(k.span().start));
        match v.get_ref() {
            DeValue::Table(t) => current = t,
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        a: Option<A>,
        #[serde(default)]
        b: Option<B>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct A {
        name: String,
        #[serde(default)]
        n: u32,
        #[serde(default)]
        list: Vec<Item>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct B {
        #[serde(default)]
        on: bool,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: String,
    }

    fn lenient(text: &str) -> (Option<Doc>, Vec<Problem>) {
        let table = DeTable::parse(text).expect("valid TOML");
        deserialize_lenient::<Doc>(&table, &Lines(text))
    }

    #[test]
    fn every_bad_key_is_reported_with_its_line_and_the_rest_still_reads() {
        let text = "[a]\nname = \"x\"\nn = \"five\"\nlist = [{ id = \"1\" }, { id = \"2\", idd = \"3\" }]\n\n[b]\non = 3\ntypo = 1\n";
        let (doc, problems) = lenient(text);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 4, "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("line 3: `a.n`: invalid type")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("line 4: `a.list[1].idd`: unknown field")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("line 7: `b.on`")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("line 8: `b.typo`")),
            "{shown:#?}"
        );
        let doc = doc.expect("the rest reads");
        let a = doc.a.expect("[a] survives its bad keys");
        assert_eq!(a.name, "x");
        assert_eq!(a.n, 0, "a dropped key gets its default");
        assert_eq!(a.list.len(), 2, "only the bad key of the element went");
        assert_eq!(a.list[0].id, "1");
        assert!(doc.b.is_some());
    }

    #[test]
    fn a_missing_required_key_is_named_once_at_its_table() {
        let (doc, problems) = lenient("[b]\non = true\n\n[a]\nname = 5\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key.as_deref(), Some("a.name"));
        assert_eq!(problems[0].line, Some(5));
        let doc = doc.expect("document");
        assert!(
            doc.a.is_none(),
            "the table without its required key is dropped"
        );
        assert!(doc.b.expect("b").on);

        let (_, problems) = lenient("[a]\nn = 1\n");
        assert_eq!(
            problems[0].to_string(),
            "line 1: `a.name`: is required but missing"
        );

        // An array element without its required key takes the array's key with it (after saying which element).
        let (doc, problems) =
            lenient("[a]\nname = \"x\"\nlist = [{ id = \"1\" }, { idd = \"2\" }]\n");
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"line 3: `a.list[1].id`: is required but missing".to_string()),
            "{shown:#?}"
        );
        assert!(doc.expect("doc").a.expect("a").list.is_empty());
    }

    #[test]
    fn keys_map_to_the_commands_they_stop() {
        let p = |key: &str| Problem::new(Some(key.into()), None, String::new());
        assert_eq!(
            p("serve.webhook_secret_env").blocked(),
            ["serve (webhooks)"]
        );
        assert_eq!(
            p("github.token_env").blocked(),
            ["run", "serve"],
            "explain reads no GitHub"
        );
        assert_eq!(p("model.api_key_env").blocked(), ["run", "serve"]);
        assert_eq!(
            p("jira.token_env").blocked(),
            ["run", "serve", "policy explain"]
        );
        assert_eq!(
            p("serve.queue").blocked(),
            ["run", "serve", "policy explain", "jobs, pause, resume"]
        );
        assert_eq!(p("serve.concurrency").blocked(), ["serve"]);
        assert_eq!(p("poll.interval_secs").blocked(), ["serve"]);
        assert_eq!(
            p("sandbox.cpus").blocked(),
            ["run", "serve", "policy explain", "doctor, bench"]
        );
        assert_eq!(
            p("tpyo").blocked().len(),
            Purpose::ALL.len(),
            "an unknown key may be a typo of anything"
        );
        assert_eq!(
            Problem::new(None, Some(1), "syntax".into()).blocked().len(),
            6
        );
    }

    #[test]
    fn line_of_finds_the_key_or_its_table() {
        let text = "x = 1\n\n[serve]\nlisten = \"a\"\nconcurrency = 0\n";
        let table = DeTable::parse(text).expect("toml");
        let lines = Lines(text);
        assert_eq!(
            line_of(table.get_ref(), "serve.concurrency", &lines),
            Some(5)
        );
        assert_eq!(
            line_of(table.get_ref(), "serve.lease_secs", &lines),
            Some(3)
        );
        assert_eq!(line_of(table.get_ref(), "poll.enabled", &lines), None);
    }
}
