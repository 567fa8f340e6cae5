//! `drafter verify` and `drafter key show|rotate`.

use std::process::ExitCode;

use anyhow::Context;
use drafter::policy;
use drafter::proof;

use super::args::KeyCommand;

/// Trusted keys from `--key` values: hex keys, key files, or data directories.
fn pinned_keys(values: &[String]) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    let mut keys = Vec::new();
    for v in values {
        let p = std::path::Path::new(v);
        if p.is_dir() {
            let found = proof::known_keys(p);
            if found.is_empty() {
                anyhow::bail!("--key {v}: no runner.pub or keys/*.pub in this directory");
            }
            keys.extend(found);
            continue;
        }
        let text = if p.is_file() {
            std::fs::read_to_string(p).with_context(|| format!("reading {v}"))?
        } else {
            v.clone()
        };
        keys.push(
            proof::parse_public_key(text.trim()).map_err(|e| anyhow::anyhow!("--key {v}: {e}"))?,
        );
    }
    Ok(keys)
}

/// `drafter verify`'s demands beyond keys, policy and repository.
pub struct VerifyExpect {
    pub digest: Option<String>,
    pub allow_incomplete: bool,
    pub allow_signer_change: bool,
}

pub fn verify(
    path: &std::path::Path,
    keys: &[String],
    policy_file: Option<&std::path::Path>,
    repo: Option<&std::path::Path>,
    expect: VerifyExpect,
) -> anyhow::Result<ExitCode> {
    let mut pins = proof::Pins {
        keys: pinned_keys(keys)?,
        policy_hash: None,
        digest: expect.digest,
        allow_incomplete: expect.allow_incomplete,
        allow_signer_change: expect.allow_signer_change,
    };
    if let Some(f) = policy_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        pins.policy_hash = Some(policy::parse(&text, f)?.hash);
    }
    let summary = match proof::verify(path, &pins) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("verification failed: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let repo_check = match (repo, &summary.last_run) {
        (Some(r), Some(run)) => Some(proof::verify::check_repo(run, r)),
        _ => None,
    };
    if let Some(Err(e)) = &repo_check {
        eprintln!("verification failed: {}: {e}", summary.path.display());
        return Ok(ExitCode::FAILURE);
    }
    print!(
        "{}",
        proof::verify::render(
            &summary,
            policy_file,
            repo.zip(repo_check.and_then(Result::ok))
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub fn key_cmd(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Show { dir } => {
            let data_dir = dir.resolve()?;
            let key = proof::RunnerKey::load_or_create(&data_dir)?;
            println!("public key: {}", key.public_hex());
            println!("key id:     {}", key.key_id());
            println!("file:       {}", data_dir.join(proof::PUB_FILE).display());
            let retired: Vec<_> = proof::known_keys(&data_dir)
                .into_iter()
                .filter(|k| *k != key.verifying_key())
                .collect();
            for k in retired {
                println!(
                    "retired:    {} (key id {})",
                    hex::encode(k.as_bytes()),
                    proof::key_id(&k)
                );
            }
        }
        KeyCommand::Rotate { dir } => {
            let data_dir = dir.resolve()?;
            let (old, new) = proof::RunnerKey::rotate(&data_dir)?;
            println!(
                "retired key id: {old} (public key kept in {})",
                data_dir.join(proof::KEYS_DIR).display()
            );
            println!("new public key: {}", new.public_hex());
            println!("new key id:     {}", new.key_id());
            println!(
                "re-pin the new key where bundles are checked; pass --key {} to accept both",
                data_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
