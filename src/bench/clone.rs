//! `drafter bench clone`: how long a job waits for its workspace, cloned over smart HTTP as without a mirror,
//! against made from a warm mirror ([`MirrorCache`]) as `[repo] mirror = true` does.
//!
//! The repository is generated (`git fast-import`, then `git repack -a -d` as a forge would hold it): `files`
//! files in 100-file directories, added ten per commit over `commits` commits, each commit after the first also
//! rewriting five earlier files, so the history is more than the tip. It is served by `git http-backend` behind a
//! small HTTP server on 127.0.0.1 that demands the bench's token by HTTP Basic, as a forge does; both paths hand
//! the token to the credential callback only. Timed, per run: from nothing to a checked-out workspace on `main`
//! (the plain clone: [`crate::repo::clone_with`]; the mirror: [`MirrorCache::clone_with`], whose fetch of the
//! up-to-date mirror still asks the server for its refs). The mirror path is timed twice: with a spare workspace
//! ready (`[repo] spare_workspaces`, the default: the job takes the spare made in the background after the last
//! job), and without (the workspace made and checked out on the job's path). Each timed run starts with no
//! background work running. The first mirror use (it clones the mirror) is shown apart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine;

use super::{ms, BenchError, Row};
use crate::config::Secret;
use crate::repo::{self, MirrorCache};

/// The target: warm-mirror workspace time at most this fraction of a plain clone's.
pub const TARGET_RATIO: f64 = 0.1;

/// Token the bench's server demands (not a secret: it exists only for the bench's lifetime).
const BENCH_TOKEN: &str = "drafter-bench-token";

/// Largest request body the bench's server reads (upload-pack negotiations are small).
const MAX_BODY: usize = 64 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    /// Files at the tip of the generated repository.
    pub files: usize,
    /// Commits in its history.
    pub commits: usize,
    /// Timed workspaces per path.
    pub runs: usize,
    /// Where to work (default: the system's temporary directory). Use the disk the data directory is on.
    pub dir: Option<PathBuf>,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct CloneReport {
    /// Files and commits of the generated repository.
    pub files: usize,
    /// See `files`.
    pub commits: usize,
    /// Size of the served repository's pack files.
    pub pack_bytes: u64,
    /// Plain clones over HTTP.
    pub plain: Row,
    /// The first use of an empty cache: it clones the mirror, then makes the workspace.
    pub cold: Duration,
    /// Workspaces from the warm mirror, a spare ready (what a job of a repository seen before waits for).
    pub spare: Row,
    /// The same, the base one commit (five files changed) ahead of the spare: it is brought forward.
    pub moved: Row,
    /// Workspaces from the warm mirror, made on the path (no spare, or spares off).
    pub warm: Row,
    /// The part both paths pay alike: checking the base out into an empty working tree.
    pub checkout: Row,
}

impl CloneReport {
    /// Warm (spare ready) p50 over plain p50: the target's ratio.
    pub fn ratio(&self) -> f64 {
        self.spare.p50.as_secs_f64() / self.plain.p50.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Warm without a spare, p50 over plain p50.
    pub fn ratio_without_spare(&self) -> f64 {
        self.warm.p50.as_secs_f64() / self.plain.p50.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Warm without a spare p50 over plain p50, each less the checkout's p50: what the mirror alone changes.
    pub fn ratio_without_checkout(&self) -> f64 {
        let c = self.checkout.p50.as_secs_f64();
        let warm = (self.warm.p50.as_secs_f64() - c).max(0.0);
        warm / (self.plain.p50.as_secs_f64() - c).max(f64::MIN_POSITIVE)
    }

    /// Whether the target is met.
    pub fn met(&self) -> bool {
        self.ratio() <= TARGET_RATIO
    }

    /// The Markdown table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Repository: {} files, {} commits, {:.1} MB packed, served over smart HTTP (git http-backend).\n\n",
            self.files,
            self.commits,
            self.pack_bytes as f64 / 1e6
        );
        out.push_str("| workspace ready | runs | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
        for r in [
            &self.plain,
            &self.spare,
            &self.moved,
            &self.warm,
            &self.checkout,
        ] {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.name,
                r.n,
                ms(r.p50),
                ms(r.p99)
            ));
        }
        out.push_str(&format!(
            "| first use: mirror cloned, then workspace | 1 | {} | {} |\n\nwarm mirror, spare ready / plain clone \
             (p50): {:.3} (target <= {TARGET_RATIO}): {}\nwarm mirror, no spare / plain clone (p50): {:.3}\nthe same, \
             less the checkout both pay (p50): {:.3}\n",
            ms(self.cold),
            ms(self.cold),
            self.ratio(),
            if self.met() { "met" } else { "not met" },
            self.ratio_without_spare(),
            self.ratio_without_checkout()
        ));
        out
    }
}

/// Generates the repository, serves it, and times both paths.
pub async fn run(opts: &CloneOptions) -> Result<CloneReport, BenchError> {
    let scratch = match &opts.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("drafter-bench-clone-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("drafter-bench-clone-")
            .tempdir()?,
    };
    let root = scratch.path().join("served");
    let bare = root.join("bench").join("big.git");
    std::fs::create_dir_all(&bare)?;
    let t = Instant::now();
    generate(&bare, opts.files.max(1), opts.commits.max(1))?;
    eprintln!(
        "drafter bench clone: generated {} files over {} commits in {:.1} s",
        opts.files,
        opts.commits,
        t.elapsed().as_secs_f64()
    );
    let pack_bytes = pack_size(&bare);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(serve_git).with_state(root.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{addr}/bench/big.git");
    let work = scratch.path().join("work");
    let runs = opts.runs.max(1);
    let served = bare.clone();
    let timed = blocking(move || time_paths(&url, &served, &work, runs)).await;
    server.abort();
    let Timings {
        plain,
        cold,
        spare,
        moved,
        warm,
        checkout,
    } = timed?;
    Ok(CloneReport {
        files: opts.files,
        commits: opts.commits,
        pack_bytes,
        plain: Row::new("plain clone over HTTP", plain),
        cold,
        spare: Row::new("from the warm mirror, a spare ready (fetch + take)", spare),
        moved: Row::new(
            "the same, the base a commit ahead of the spare (fetch + take + bring forward)",
            moved,
        ),
        warm: Row::new(
            "from the warm mirror, no spare (fetch + local workspace)",
            warm,
        ),
        checkout: Row::new("of which both pay: checkout of the tip", checkout),
    })
}

/// What [`time_paths`] measured.
struct Timings {
    /// Plain clones.
    plain: Vec<Duration>,
    /// The first mirror use.
    cold: Duration,
    /// Warm-mirror workspaces taken from a spare.
    spare: Vec<Duration>,
    /// The same, after the base moved a commit ahead of the spare.
    moved: Vec<Duration>,
    /// Warm-mirror workspaces made on the path.
    warm: Vec<Duration>,
    /// Checkouts alone.
    checkout: Vec<Duration>,
}

/// Plain clones and mirror workspaces (a spare ready, and none), in turn so all see the same machine, each started
/// with no spare being made in the background; then the checkout alone, in the last no-spare workspace emptied of
/// everything but `.git`.
fn time_paths(url: &str, bare: &Path, work: &Path, runs: usize) -> Result<Timings, BenchError> {
    let token = Secret::new(BENCH_TOKEN.to_string());
    let cache = MirrorCache::new(work.join("mirrors"), u64::MAX);
    // The same mirrors; spares beside the workspaces, as the worker keeps them.
    let spared = MirrorCache::new(work.join("mirrors"), u64::MAX).with_spares(work.join("spares"));
    let git = |e: repo::RepoError| BenchError::Setup(format!("git: {e}"));
    let t = Instant::now();
    let (first, _) = spared
        .clone_with(url, &work.join("cold"), "main", &[], &token)
        .map_err(git)?;
    let cold = t.elapsed();
    drop(first);
    let mut out = Timings {
        plain: Vec::new(),
        cold,
        spare: Vec::new(),
        moved: Vec::new(),
        warm: Vec::new(),
        checkout: Vec::new(),
    };
    for i in 0..runs {
        spared.settle();
        let dest = work.join(format!("plain-{i}"));
        let t = Instant::now();
        let r = repo::clone_with(url, &dest, "main", &[], &token).map_err(git)?;
        out.plain.push(t.elapsed());
        drop(r);
        std::fs::remove_dir_all(&dest)?;

        let dest = work.join(format!("spare-{i}"));
        let t = Instant::now();
        let (r, used) = spared
            .clone_with(url, &dest, "main", &[], &token)
            .map_err(git)?;
        out.spare.push(t.elapsed());
        if used.cloned || !used.spare {
            return Err(BenchError::Setup(format!(
                "the warm mirror did not serve a spare: {used:?}"
            )));
        }
        drop(r);
        spared.settle();
        std::fs::remove_dir_all(&dest)?;

        advance(bare, i)?;
        let dest = work.join(format!("moved-{i}"));
        let t = Instant::now();
        let (r, used) = spared
            .clone_with(url, &dest, "main", &[], &token)
            .map_err(git)?;
        out.moved.push(t.elapsed());
        if !used.spare || !used.fetched {
            return Err(BenchError::Setup(format!(
                "the moved base was not served from the spare: {used:?}"
            )));
        }
        drop(r);
        spared.settle();
        std::fs::remove_dir_all(&dest)?;

        let dest = work.join(format!("warm-{i}"));
        let t = Instant::now();
        let (r, used) = cache
            .clone_with(url, &dest, "main", &[], &token)
            .map_err(git)?;
        out.warm.push(t.elapsed());
        if used.cloned {
            return Err(BenchError::Setup("the warm mirror was cloned again".into()));
        }
        let t = Instant::now();
        empty_but_git(&dest)?;
        r.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .map_err(|e| BenchError::Setup(format!("checkout: {e}")))?;
        out.checkout.push(t.elapsed());
        drop(r);
        std::fs::remove_dir_all(&dest)?;
    }
    spared.settle();
    Ok(out)
}

/// One more commit on the served `main`, rewriting five files as the generated history's commits do.
fn advance(bare: &Path, round: usize) -> Result<(), BenchError> {
    let e = |e: git2::Error| BenchError::Setup(format!("advancing the served repository: {e}"));
    let r = git2::Repository::open_bare(bare).map_err(e)?;
    let head = r
        .find_commit(r.refname_to_id("refs/heads/main").map_err(e)?)
        .map_err(e)?;
    let tree = head.tree().map_err(e)?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for k in 0..5 {
        let n = (round * 7 + k * 3001) % 20_000;
        let path = format!("src/m{:03}/f{n:05}.rs", n / 100);
        let blob = r
            .blob(file_text(n, 100_000 + round).as_bytes())
            .map_err(e)?;
        update.upsert(path, blob, git2::FileMode::Blob);
    }
    let new_tree = r
        .find_tree(update.create_updated(&r, &tree).map_err(e)?)
        .map_err(e)?;
    let sig = git2::Signature::now("Bench", "bench@drafter.invalid").map_err(e)?;
    r.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        &format!("bench move {round}"),
        &new_tree,
        &[&head],
    )
    .map_err(e)?;
    Ok(())
}

/// Removes everything in `dir` but `.git`, and the index, so a checkout writes every file again.
fn empty_but_git(dir: &Path) -> Result<(), BenchError> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::remove_file(dir.join(".git").join("index"))?;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
) -> Result<T, BenchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BenchError::Setup(format!("bench task: {e}")))?
}

/// Writes the history with `git fast-import` into the bare repository at `bare`, then repacks it.
fn generate(bare: &Path, files: usize, commits: usize) -> Result<(), BenchError> {
    git(bare, &["init", "--bare", "-q", "-b", "main"])?;
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cli("git fast-import", e.to_string()))?;
    let per_commit = files.div_ceil(commits);
    {
        let stdin = child
            .stdin
            .as_mut()
            .ok_or_else(|| cli("git fast-import", "no stdin".into()))?;
        let mut w = std::io::BufWriter::new(stdin);
        let mut added = 0usize;
        for c in 0..commits {
            let when = 1_700_000_000 + c as u64 * 600;
            write!(
                w,
                "commit refs/heads/main\ncommitter Bench <bench@drafter.invalid> {when} +0000\ndata <<EOM\n\
                 change {c}\nEOM\n"
            )?;
            let mut touched = Vec::new();
            for _ in 0..per_commit {
                if added < files {
                    touched.push((added, 0));
                    added += 1;
                }
            }
            if c > 0 {
                // Five earlier files rewritten (a line changed), spread over the tree.
                for k in 0..5 {
                    let n = (c * 7919 + k * 104_729) % added.max(1);
                    touched.push((n, c));
                }
            }
            for (n, rev) in touched {
                let body = file_text(n, rev);
                write!(
                    w,
                    "M 100644 inline src/m{:03}/f{n:05}.rs\ndata {}\n",
                    n / 100,
                    body.len()
                )?;
                w.write_all(body.as_bytes())?;
                w.write_all(b"\n")?;
            }
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .map_err(|e| cli("git fast-import", e.to_string()))?;
    if !out.status.success() {
        return Err(cli(
            "git fast-import",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    git(bare, &["repack", "-a", "-d", "-q"])?;
    Ok(())
}

/// A source-like file of about 1.5 KB; `rev` changes one line.
fn file_text(n: usize, rev: usize) -> String {
    let mut s = format!("//! File {n}.\n\n");
    for line in 0..24 {
        let v = if line == n % 24 { rev } else { line * 31 + n };
        s.push_str(&format!(
            "pub fn f{n}_{line}(x: u64) -> u64 {{ x.wrapping_mul({v}).rotate_left({}) }}\n",
            line % 13
        ));
    }
    s
}

fn pack_size(bare: &Path) -> u64 {
    std::fs::read_dir(bare.join("objects").join("pack"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn git(bare: &Path, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(args)
        .output()
        .map_err(|e| cli(&format!("git {}", args.join(" ")), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(cli(
            &format!("git {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn cli(command: &str, detail: String) -> BenchError {
    BenchError::Cli {
        command: command.to_string(),
        detail,
    }
}

/// `git http-backend` as CGI, behind HTTP Basic with the bench's token.
async fn serve_git(State(root): State<PathBuf>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let authorised = header("authorization")
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|up| up.split_once(':').is_some_and(|(_, p)| p == BENCH_TOKEN));
    if !authorised {
        return Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"bench\"")
            .body(Body::empty())
            .unwrap_or_default();
    }
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return status(413);
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", &root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "bench")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (h, env) in [
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        let v = header(h);
        if !v.is_empty() {
            cmd.env(env, v);
        }
    }
    let Ok(mut child) = cmd.spawn() else {
        return status(500);
    };
    let stdin = child.stdin.take();
    // Written while stdout is read, so a large exchange cannot stall on full pipes.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        }
    });
    let Ok(out) = child.wait_with_output().await else {
        return status(500);
    };
    let _ = writer.await;
    parse_cgi(&out.stdout)
}

fn status(code: u16) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap_or_default()
}

/// CGI output (headers, a blank line, the body) as a response.
fn parse_cgi(out: &[u8]) -> Response {
    let split = |sep: &[u8]| out.windows(sep.len()).position(|w| w == sep);
    let (head, body) = match (split(b"\r\n\r\n"), split(b"\n\n")) {
        (Some(i), _) => (&out[..i], &out[i + 4..]),
        (None, Some(i)) => (&out[..i], &out[i + 2..]),
        (None, None) => return status(502),
    };
    let mut builder = Response::builder().status(200);
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            builder = builder.status(code);
        } else if let Ok(v) = HeaderValue::from_str(value) {
            builder = builder.header(name.trim(), v);
        }
    }
    builder.body(Body::from(body.to_vec())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_history_has_the_files_and_commits_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("g.git");
        generate(&bare, 250, 20).expect("generate");
        let r = git2::Repository::open_bare(&bare).expect("open");
        let head = r
            .revparse_single("main")
            .expect("main")
            .peel_to_commit()
            .expect("commit");
        let mut walk = r.revwalk().expect("walk");
        walk.push(head.id()).expect("push");
        assert_eq!(walk.count(), 20);
        let mut files = 0;
        head.tree()
            .expect("tree")
            .walk(git2::TreeWalkMode::PreOrder, |_, e| {
                if e.kind() == Some(git2::ObjectType::Blob) {
                    files += 1;
                }
                git2::TreeWalkResult::Ok
            })
            .expect("walk tree");
        assert_eq!(files, 250);
    }
}
