//! The bundled example, end to end: a Jira ticket becomes a draft pull request.
//!
//! Starts stand-ins for Jira Cloud, GitHub (REST plus a real git smart-HTTP remote) and a scripted model, seeded from
//! `examples/demo/` (a tiny Python repository, the ticket DEMO-1 and the model's transcript), writes a runner
//! configuration pointing at them, and runs the real `drafter run --ticket DEMO-1` binary against it. The sandbox is
//! the real hardened Docker container. Afterwards it shows the draft PR, the pushed commit, the ticket's comments and
//! `drafter verify` on the job's proof bundle, pinned to the runner key and checked against the repository.
//!
//! Run it with `examples/demo.sh` (which builds the sandbox image and the binaries first).

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::harness::{Options, Stack, DEMO_REPO};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bin = drafter_binary()?;
    let mut stack = Stack::start(Options::default()).await;
    // Keep the data directory (proof bundle, job record) after the demo exits, so it can be inspected and verified.
    stack.dir.disable_cleanup(true);

    println!("stand-in Jira:   {}", stack.jira.base_url());
    println!("stand-in GitHub: {}", stack.github.api_url());
    println!("scripted model:  {}", stack.model.base_url());
    println!("configuration:   {}", stack.config_path.display());
    println!();
    println!(
        "$ drafter run --ticket DEMO-1 --config {}",
        stack.config_path.display()
    );

    let status = stack
        .drafter(&bin, &["run", "--ticket", "DEMO-1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .status()
        .await?;
    println!();
    if !status.success() {
        return Err(format!("drafter run failed ({status})").into());
    }

    for pr in stack.github.pulls(DEMO_REPO) {
        println!(
            "pull request #{} draft={} {} <- {}: {}",
            pr["number"], pr["draft"], pr["base"], pr["head"], pr["title"]
        );
    }
    let branch = git(
        &stack.bare_repo,
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/drafter/",
        ],
    );
    let branch = branch.trim().to_string();
    println!("\n$ git log -1 {branch}   (in the stand-in's bare repository)");
    println!(
        "{}",
        git(
            &stack.bare_repo,
            &["log", "-1", "--format=%an <%ae>%n%n%B", &branch]
        )
    );
    println!("$ git diff main {branch}");
    println!("{}", git(&stack.bare_repo, &["diff", "main", &branch]));
    println!("Comments on DEMO-1:");
    for c in stack.jira.comment_texts("DEMO-1") {
        println!("  - {c}");
    }

    let jobs = stack.data_dir().join("jobs");
    let job = std::fs::read_dir(&jobs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .ok_or("no job directory")?;
    let pubkey = stack.data_dir().join("runner.pub");
    println!(
        "\n$ drafter verify {} --key {} --repo {}",
        job.display(),
        pubkey.display(),
        stack.bare_repo.display()
    );
    let verified = tokio::process::Command::new(&bin)
        .arg("verify")
        .arg(&job)
        .arg("--key")
        .arg(&pubkey)
        .arg("--repo")
        .arg(&stack.bare_repo)
        .status()
        .await?;
    if !verified.success() {
        return Err("proof bundle verification failed".into());
    }
    println!(
        "\nThe job's data directory is kept at {}",
        stack.data_dir().display()
    );
    println!(
        "To run against a real Jira, GitHub and model, follow README's \"Pointing it at a real Jira, GitHub and \
         model\": copy examples/drafter.toml, fill it in, check it with"
    );
    println!("  drafter check-config --config drafter.toml --for run");
    println!("and run a ticket of an allowlisted project, e.g.");
    println!("  drafter run --ticket PAY-123 --config drafter.toml");
    Ok(())
}

/// `target/<profile>/drafter`, next to this example's own binary (`target/<profile>/examples/demo`).
fn drafter_binary() -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Ok(p) = std::env::var("DRAFTER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("drafter"))
        .ok_or("cannot locate the drafter binary")?;
    if !bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --bins` first (drafter and drafter-sandboxd)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

fn git(git_dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(git failed: {e})"),
    }
}
