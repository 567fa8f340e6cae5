//! The README, followed word for word. The commands of "Pointing it at a real Jira, GitHub and model" (with its
//! service section) and of "Policy as code" (with the audit steps) are read out of README.md and run in order, by
//! bash, in a fresh directory, with the real `drafter` binary on the `PATH`, against stand-ins for Jira, GitHub and
//! the model (`tests/support/`) and the real Docker sandbox. Every command must exit 0 and print the lines the README
//! shows under it, in that order. When the README changes, this test follows it; when a command's behaviour or
//! output changes, the README has to change with it.
//!
//! What the test does that a reader would do differently, all of it listed here:
//! - URLs: the example's service URLs are rewritten to the stand-ins' (in the copied `drafter.toml`, in commands
//!   and in expected output): [`Rewrites`]. So are the example's `data_dir` (a temporary directory instead of
//!   `/var/lib/drafter`) and its listen address (a free port instead of 8787), the two other things step 2 tells
//!   the reader to fill in that a test machine cannot share.
//! - Values the reader types in: `export NAME=...` sets `NAME` to the stand-in's secret ([`secret_for`]); a
//!   `<placeholder>` in a command is what an earlier command's output showed in its place (`<job>`, `<branch>`,
//!   `<digest>`), or, for the few the reader brings themselves, [`given`] (`<accountId>`).
//! - The reader's own git credentials for the repository: `GIT_CONFIG_*` with the stand-in's token.
//!
//! The console-block format: `$ ` starts a command (bash runs it as written; `#` comments are bash's), a trailing `\`
//! continues it, other lines are its expected output. Expected lines match whole output lines after runs of blanks
//! are collapsed; `...` inside a line matches anything, a line `...` alone stands for lines not shown, and
//! `<name>` matches anything the first time and is remembered. `cmd &` runs in the background (its shown lines are
//! awaited); `kill %N` sends it SIGTERM, waits for it to exit 0, and its shown lines are the job's last output.
//!
//! Long on purpose (over 700 lines): the README's sections in order, one console block after another, as a user would
//! run them.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::github::GithubStandIn;
use support::harness::{
    demo_files, demo_script, demo_ticket, root, GITHUB_TOKEN, JIRA_EMAIL, JIRA_TOKEN, MODEL_KEY,
    SECRETS, WEBHOOK_SECRET,
};
use support::jira::JiraStandIn;
use support::model::ModelStandIn;

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

/// The README sections followed, in order; each with its subsections.
const SECTIONS: &[&str] = &[
    "Pointing it at a real Jira, GitHub and model",
    "Policy as code",
];

/// The repository the example configuration allowlists first for project PAY (`examples/drafter.toml`).
const REPO: &str = "acme/payments";

/// One command of the README and what it shows under it.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// The section heading it is under.
    section: String,
    /// Its line in README.md.
    line: usize,
    /// As written (continuations joined).
    command: String,
    /// The output lines shown under it.
    expected: Vec<String>,
}

/// The headings of `markdown` with their level and line index.
fn headings(lines: &[&str]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let level = l.chars().take_while(|c| *c == '#').count();
        if level > 0 && l[level..].starts_with(' ') {
            out.push((level, i, l[level..].trim().to_string()));
        }
    }
    out
}

/// The steps of the section headed `title` (and its subsections), from its console and shell blocks.
fn section_steps(markdown: &str, title: &str) -> Vec<Step> {
    let lines: Vec<&str> = markdown.lines().collect();
    let heads = headings(&lines);
    let (level, start, _) = heads
        .iter()
        .find(|(_, _, t)| t == title)
        .cloned()
        .unwrap_or_else(|| panic!("README.md has no section {title:?}"));
    let end = heads
        .iter()
        .find(|(l, i, _)| *i > start && *l <= level)
        .map_or(lines.len(), |(_, i, _)| *i);
    let mut steps = Vec::new();
    let mut heading = title.to_string();
    let mut i = start + 1;
    while i < end {
        let l = lines[i];
        if let Some((_, _, t)) = heads.iter().find(|(_, at, _)| *at == i) {
            heading = t.clone();
        }
        let trimmed = l.trim_start();
        let Some(lang) = trimmed.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = l.len() - trimmed.len();
        let lang = lang.trim().to_string();
        let mut body: Vec<(usize, String)> = Vec::new();
        i += 1;
        while i < end && !lines[i].trim_start().starts_with("```") {
            let raw = lines[i];
            let cut = raw.len() - raw.trim_start().len();
            body.push((i + 1, raw[cut.min(indent)..].to_string()));
            i += 1;
        }
        i += 1;
        match lang.as_str() {
            "console" => steps.extend(console_steps(&heading, &body)),
            "sh" | "bash" | "shell" => steps.extend(shell_steps(&heading, &body)),
            _ => {}
        }
    }
    steps
}

fn console_steps(section: &str, body: &[(usize, String)]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continuing = false;
    for (line, text) in body {
        if continuing {
            let step = steps.last_mut().expect("a command is being continued");
            step.command.push('\n');
            step.command.push_str(text);
            continuing = text.ends_with('\\');
        } else if let Some(cmd) = text.strip_prefix("$ ") {
            steps.push(Step {
                section: section.to_string(),
                line: *line,
                command: cmd.to_string(),
                expected: Vec::new(),
            });
            continuing = cmd.ends_with('\\');
        } else if let Some(step) = steps.last_mut() {
            if !text.trim().is_empty() {
                step.expected.push(text.clone());
            }
        } else {
            panic!("README.md line {line}: output before any command in a console block");
        }
    }
    steps
}

fn shell_steps(section: &str, body: &[(usize, String)]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continuing = false;
    for (line, text) in body {
        if continuing {
            let step = steps.last_mut().expect("continued");
            step.command.push('\n');
            step.command.push_str(text);
        } else if !text.trim().is_empty() && !text.trim_start().starts_with('#') {
            steps.push(Step {
                section: section.to_string(),
                line: *line,
                command: text.clone(),
                expected: Vec::new(),
            });
        }
        continuing = text.ends_with('\\');
    }
    steps
}

/// Runs of blanks as one space, trimmed: column alignment is not what the README promises.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `<name>` placeholders in `text`, in order.
fn placeholders(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"<([A-Za-z][A-Za-z0-9_-]*)>").expect("regex");
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

/// Matches `expected` (README lines) against `actual` output lines in order, filling `known` with what the
/// placeholders stood for. `Err` names the first line not found.
fn match_output(
    expected: &[String],
    actual: &str,
    known: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let actual: Vec<String> = actual.lines().map(squash).collect();
    let token = regex::Regex::new(r"<([A-Za-z][A-Za-z0-9_-]*)>|\.\.\.").expect("regex");
    let mut at = 0;
    for want in expected {
        let want = squash(want);
        if want == "..." {
            continue;
        }
        let mut pattern = String::from("^");
        let mut names = Vec::new();
        let mut last = 0;
        for m in token.find_iter(&want) {
            pattern.push_str(&regex::escape(&want[last..m.start()]));
            let t = m.as_str();
            if t == "..." {
                pattern.push_str(".*");
            } else {
                let name = &t[1..t.len() - 1];
                match known.get(name) {
                    Some(v) => pattern.push_str(&regex::escape(v)),
                    None => {
                        pattern.push_str(&format!("(?P<p{}>.+?)", names.len()));
                        names.push(name.to_string());
                    }
                }
            }
            last = m.end();
        }
        pattern.push_str(&regex::escape(&want[last..]));
        pattern.push('$');
        let re = regex::Regex::new(&pattern).map_err(|e| format!("{want:?}: {e}"))?;
        let found = actual[at..].iter().position(|l| re.is_match(l));
        let Some(offset) = found else {
            return Err(format!("no line matching {want:?} (after line {at})"));
        };
        let caps = re.captures(&actual[at + offset]).expect("matched");
        for (i, name) in names.iter().enumerate() {
            let value = caps[format!("p{i}").as_str()].to_string();
            match known.get(name) {
                Some(v) if *v != value => {
                    return Err(format!("<{name}> is {value:?} here but was {v:?} before"))
                }
                _ => {
                    known.insert(name.clone(), value);
                }
            }
        }
        at += offset + 1;
    }
    Ok(())
}

/// The stand-in value for a secret the README exports as `NAME=...`.
fn secret_for(name: &str) -> Option<&'static str> {
    match name {
        "JIRA_API_TOKEN" => Some(JIRA_TOKEN),
        "GITHUB_TOKEN" => Some(GITHUB_TOKEN),
        "ANTHROPIC_API_KEY" => Some(MODEL_KEY),
        "JIRA_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET),
        _ => None,
    }
}

/// Placeholders the reader fills in from their own world rather than from an earlier command's output.
fn given(name: &str) -> Option<&'static str> {
    match name {
        // A Jira account to explain a trigger for: the stand-in ticket's reporter.
        "accountId" => Some("712020:5b1c-reporter"),
        _ => None,
    }
}

/// The example's service URLs and host paths, and what they become here.
struct Rewrites(Vec<(String, String)>);

impl Rewrites {
    fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (from, to) in &self.0 {
            out = out.replace(from, to);
        }
        out
    }
}

/// A command running in the background (`cmd &`).
struct Job {
    child: tokio::process::Child,
    output: PathBuf,
    line: usize,
}

/// The reader's shell: a working directory, an environment, and what earlier output showed.
struct Reader {
    dir: PathBuf,
    env: BTreeMap<String, String>,
    known: BTreeMap<String, String>,
    rewrites: Rewrites,
    jobs: Vec<Job>,
    transcript: String,
    outputs: usize,
}

impl Reader {
    fn fill_in(&mut self, step: &Step) -> String {
        let mut command = self.rewrites.apply(&step.command);
        for name in placeholders(&command) {
            let value = self
                .known
                .get(&name)
                .cloned()
                .or_else(|| given(&name).map(str::to_string))
                .unwrap_or_else(|| {
                    panic!(
                        "README.md line {}: <{name}> in `{}` was not shown by an earlier command, and the test \
                         has no value for it",
                        step.line, step.command
                    )
                });
            command = command.replace(&format!("<{name}>"), &value);
        }
        command
    }

    /// `export A=... B=...`: the reader's secrets (and any literal values) into the environment.
    fn export(&mut self, step: &Step, args: &str) {
        let args = args.split('#').next().unwrap_or("");
        for assignment in args.split_whitespace() {
            let (name, value) = assignment
                .split_once('=')
                .unwrap_or_else(|| panic!("README.md line {}: `export {assignment}`", step.line));
            let value = if value == "..." {
                secret_for(name)
                    .unwrap_or_else(|| {
                        panic!(
                            "README.md line {}: exports {name}=... and the test has no stand-in value for it",
                            step.line
                        )
                    })
                    .to_string()
            } else {
                value.to_string()
            };
            self.env.insert(name.to_string(), value);
        }
    }

    /// The reader fills in the configuration they copied (README step 2): the rewrites, nothing else.
    fn fill_in_config(&self) {
        let path = self.dir.join("drafter.toml");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let filled = self.rewrites.apply(&text);
            if filled != text {
                std::fs::write(&path, filled).expect("write drafter.toml");
            }
        }
    }

    fn command(&mut self, shell_command: &str) -> (tokio::process::Command, PathBuf) {
        self.outputs += 1;
        let output = self.dir.join(format!(".out-{}", self.outputs));
        let file = std::fs::File::create(&output).expect("output file");
        let mut cmd = tokio::process::Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-c", shell_command])
            .current_dir(&self.dir)
            .env_clear()
            .envs(&self.env)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .kill_on_drop(true);
        (cmd, output)
    }

    async fn step(&mut self, step: &Step) {
        let command = self.fill_in(step);
        let shown = command.split('#').next().unwrap_or("").trim().to_string();
        let expected: Vec<String> = step
            .expected
            .iter()
            .map(|e| self.rewrites.apply(e))
            .collect();
        self.transcript.push_str(&format!(
            "\n[{}] README.md:{} $ {command}\n",
            step.section, step.line
        ));
        if let Some(args) = shown.strip_prefix("export ") {
            self.export(step, args);
            return;
        }
        if let Some(n) = shown.strip_prefix("kill %") {
            self.stop_job(step, n.trim(), &expected).await;
            return;
        }
        if let Some(background) = shown.strip_suffix('&').filter(|c| !c.ends_with('&')) {
            let (mut cmd, output) = self.command(background.trim());
            let child = cmd.spawn().expect("spawn background command");
            let job = Job {
                child,
                output,
                line: step.line,
            };
            // Its shown lines are awaited: a server prints them once it is up.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let text = std::fs::read_to_string(&job.output).unwrap_or_default();
                let mut known = self.known.clone();
                match match_output(&expected, &text, &mut known) {
                    Ok(()) => {
                        self.known = known;
                        self.transcript.push_str(&text);
                        break;
                    }
                    Err(e) if Instant::now() > deadline => panic!(
                        "README.md line {} (`{command}`): {e}\n--- its output so far ---\n{text}\n--- transcript \
                         ---{}",
                        step.line, self.transcript
                    ),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            self.jobs.push(job);
            return;
        }
        let (mut cmd, output) = self.command(&command);
        let status = tokio::time::timeout(Duration::from_secs(900), cmd.status())
            .await
            .unwrap_or_else(|_| panic!("README.md line {}: `{command}` did not finish", step.line))
            .expect("bash runs");
        self.fill_in_config();
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        self.transcript.push_str(&text);
        assert!(
            status.success(),
            "README.md line {}: `{command}` exited with {status}\n--- transcript ---{}",
            step.line,
            self.transcript
        );
        if let Err(e) = match_output(&expected, &text, &mut self.known) {
            panic!(
                "README.md line {} (`{command}`): {e}\n--- its output ---\n{text}\n--- transcript ---{}",
                step.line, self.transcript
            );
        }
    }

    async fn stop_job(&mut self, step: &Step, n: &str, expected: &[String]) {
        let index: usize = n.parse().expect("kill %N");
        assert!(
            index >= 1 && index <= self.jobs.len(),
            "README.md line {}: no job %{index}",
            step.line
        );
        let job = &mut self.jobs[index - 1];
        let before = std::fs::read_to_string(&job.output)
            .unwrap_or_default()
            .len();
        let pid = job.child.id().expect("the job is running").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let status = tokio::time::timeout(Duration::from_secs(120), job.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the job of README.md line {} did not stop", job.line))
            .expect("wait");
        let text = std::fs::read_to_string(&job.output).unwrap_or_default();
        let last = &text[before.min(text.len())..];
        self.transcript.push_str(last);
        assert!(
            status.success(),
            "README.md line {}: the job of line {} exited with {status}\n--- transcript ---{}",
            step.line,
            job.line,
            self.transcript
        );
        if let Err(e) = match_output(expected, last, &mut self.known) {
            panic!(
                "README.md line {}: {e}\n--- the job's last output ---\n{last}",
                step.line
            );
        }
    }
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

fn all_steps() -> Vec<Step> {
    let text = readme();
    SECTIONS
        .iter()
        .flat_map(|s| section_steps(&text, s))
        .collect()
}

#[test]
fn the_followed_sections_hold_the_commands_the_issue_names() {
    // The test must not pass by finding nothing: the path it follows has these commands, in this order.
    let steps = all_steps();
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    let order = [
        "cp examples/drafter.toml drafter.toml",
        "export JIRA_API_TOKEN=",
        "drafter check-config --config drafter.toml",
        "drafter run --ticket ",
        "drafter serve --config drafter.toml &",
        "drafter jobs list",
        "kill %1",
        "drafter policy check",
        "drafter policy explain",
        "drafter pause",
        "drafter resume",
        "drafter jobs bundle",
        "drafter verify",
    ];
    let mut at = 0;
    for want in order {
        let found = commands[at..]
            .iter()
            .position(|c| c.starts_with(want))
            .unwrap_or_else(|| panic!("no `{want}...` after {:?}", &commands[..at]));
        at += found + 1;
    }
    assert!(steps.iter().all(|s| !s.command.trim().is_empty()));
}

#[test]
fn output_patterns_match_like_the_readme_says() {
    let mut known = BTreeMap::new();
    let out = "job 20260101-abc: ticket PAY-1\n==> fetch    PAY-1  x\nnoise\nbranch:     drafter/PAY-1-x\n";
    match_output(
        &[
            "job <job>: ticket PAY-1".into(),
            "...".into(),
            "branch: <branch>".into(),
        ],
        out,
        &mut known,
    )
    .expect("matches");
    assert_eq!(known["job"], "20260101-abc");
    assert_eq!(known["branch"], "drafter/PAY-1-x");
    // A known placeholder must be the same value again.
    assert!(match_output(&["job <branch>: ticket PAY-1".into()], out, &mut known).is_err());
    // Order matters, `...` inside a line matches anything, and a missing line fails.
    assert!(match_output(
        &["==> fetch PAY-1 ...".into(), "job <job>: ...".into()],
        out,
        &mut known
    )
    .is_err());
    assert!(match_output(&["==> fetch ...".into()], out, &mut known).is_ok());
    assert!(match_output(&["not there".into()], out, &mut known).is_err());

    let md = "# T\n\n## A\n\n```console\n$ one \\\n  --flag\nout 1\n$ two # c\n```\n\n### Sub\n\n   ```sh\n   three\n   # skip\n   ```\n\n## B\n\n```console\n$ four\n```\n";
    let steps = section_steps(md, "A");
    let got: Vec<(&str, &str, usize)> = steps
        .iter()
        .map(|s| (s.command.as_str(), s.section.as_str(), s.expected.len()))
        .collect();
    assert_eq!(
        got,
        [
            ("one \\\n  --flag", "A", 1),
            ("two # c", "A", 0),
            ("three", "Sub", 0)
        ]
    );
}

/// The whole path, against the stand-ins and the real sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_real_setup_path_works_word_for_word() {
    // The README's `drafter run` and `serve` sweep orphaned containers at start-up.
    let _sweeping = support::sweeping().await;
    let steps = all_steps();

    let jira = JiraStandIn::start(JIRA_EMAIL, JIRA_TOKEN).await;
    let github = GithubStandIn::start(GITHUB_TOKEN).await;
    let model = ModelStandIn::start(demo_script()).await;
    model.set_expected_key(Some(MODEL_KEY));
    let files = demo_files();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    github.create_repo(REPO, &refs);
    // The bundled example ticket, filed under the README's key and naming the example's repository.
    let t = demo_ticket();
    let description: serde_json::Value = serde_json::from_str(
        &t["description"]
            .to_string()
            .replace("repo: acme/widgets", &format!("repo: {REPO}")),
    )
    .expect("json");
    let labels: Vec<&str> = t["labels"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let ticket = steps
        .iter()
        .find_map(|s| {
            s.command
                .strip_prefix("drafter run --ticket ")
                .and_then(|r| r.split_whitespace().next())
        })
        .expect("the README runs a ticket")
        .to_string();
    jira.add_issue(
        &ticket,
        t["summary"].as_str().expect("summary"),
        description,
        &labels,
    );

    let dir = tempfile::Builder::new()
        .prefix("drafter-readme-")
        .tempdir()
        .expect("tempdir");
    let work = dir.path().to_path_buf();
    std::os::unix::fs::symlink(root().join("examples"), work.join("examples")).expect("symlink");
    let home = work.join(".home");
    std::fs::create_dir_all(&home).expect("home");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let rewrites = Rewrites(vec![
        ("https://example.atlassian.net".into(), jira.base_url()),
        ("https://api.github.com".into(), github.api_url()),
        ("https://github.com".into(), github.git_url()),
        ("https://api.anthropic.com".into(), model.base_url()),
        (
            "/var/lib/drafter".into(),
            work.join("data").display().to_string(),
        ),
        ("127.0.0.1:8787".into(), format!("127.0.0.1:{port}")),
    ]);

    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        ),
    );
    env.insert("HOME".into(), home.display().to_string());
    env.insert("USER".into(), "reader".into());
    for pass in ["DOCKER_HOST", "DRAFTER_SANDBOX_IMAGE", "LANG"] {
        if let Ok(v) = std::env::var(pass) {
            env.insert(pass.into(), v);
        }
    }
    // The reader's git credentials for their repository (HTTPS with a token as the password).
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{GITHUB_TOKEN}"));
    env.insert("GIT_CONFIG_COUNT".into(), "1".into());
    env.insert("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into());
    env.insert(
        "GIT_CONFIG_VALUE_0".into(),
        format!("Authorization: Basic {basic}"),
    );
    env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());

    let mut reader = Reader {
        dir: work.clone(),
        env,
        known: BTreeMap::new(),
        rewrites,
        jobs: Vec::new(),
        transcript: String::new(),
        outputs: 0,
    };
    for step in &steps {
        reader.step(step).await;
    }
    // The whole session, for `--nocapture`.
    eprintln!("{}", reader.transcript);
    assert!(
        reader
            .jobs
            .iter_mut()
            .all(|j| j.child.try_wait().ok().flatten().is_some()),
        "every background job was stopped by the README"
    );

    // What the README's commands did, seen from the other side.
    let pulls = github.pulls(REPO);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["draft"], serde_json::json!(true));
    assert_eq!(github.merge_attempts(), 0);
    // Nothing printed a secret, and no value was ever sent to the wrong service.
    let mut everything = reader.transcript.clone();
    for entry in std::fs::read_dir(&work).expect("work dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with(".out-") {
            everything.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    for s in SECRETS {
        assert!(!everything.contains(s), "a secret was printed");
    }
    assert!(
        !String::from_utf8_lossy(&std::fs::read(work.join("drafter.toml")).expect("config"))
            .contains(GITHUB_TOKEN),
        "secrets stay out of the file"
    );
}
