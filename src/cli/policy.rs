//! `drafter policy check|hash|keygen|sign|verify|explain`.

use std::process::ExitCode;

use anyhow::Context;
use drafter::config::{Config, Purpose};
use drafter::jira::JiraClient;
use drafter::policy::{self, Policy};
use drafter::proof;
use drafter::worker;

use super::args::PolicyCommand;
use super::{ledger_for, operator_name};

pub async fn policy_cmd(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let read = |file: &std::path::Path| -> anyhow::Result<Policy> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Ok(policy::parse(&text, file)?)
    };
    match command {
        PolicyCommand::Check { file } => {
            let p = read(&file)?;
            println!("{}: ok", file.display());
            println!("hash:  {}", p.hash);
            for t in &p.teams {
                println!(
                    "team {}: projects {}; repositories {}",
                    t.name,
                    t.projects.join(", "),
                    t.repos
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Hash { file } => {
            println!("{}", read(&file)?.hash);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Keygen { out } => {
            let key = proof::RunnerKey::create_file(&out)?;
            println!("policy key:  {}", out.display());
            println!("public key:  {}", key.public_hex());
            println!("key id:      {}", key.key_id());
            println!("add the public key to the runners' [policy] trusted_keys");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Sign { file, key } => {
            let p = read(&file)?;
            let key = proof::RunnerKey::load_file(&key)?;
            let sig = policy::identity::sign(&p.hash, &key);
            let path = policy::identity::write_signature(&file, &sig)?;
            println!(
                "signed {} ({}) with key {}",
                file.display(),
                p.hash,
                key.key_id()
            );
            println!("signature: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Verify { file, key } => {
            let p = read(&file)?;
            let trusted = match key {
                Some(k) => vec![read_public_key(&k)?],
                None => Vec::new(),
            };
            let Some(sig) = policy::identity::read_signature(&file)? else {
                eprintln!(
                    "{}: not signed (no {})",
                    file.display(),
                    policy::identity::sig_path(&file).display()
                );
                return Ok(ExitCode::FAILURE);
            };
            match policy::identity::verify(&sig, &p.hash, &trusted) {
                Ok(key_id) => {
                    println!("{}: signature ok", file.display());
                    println!("hash:    {}", p.hash);
                    println!("signer:  {key_id} ({})", sig.public_key);
                    println!("signed:  {}", sig.signed_at);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCommand::Explain {
            ticket,
            user,
            config,
            json,
        } => explain(&ticket, user.as_deref(), &config, json).await,
    }
}

/// A hex public key, or a file holding one.
fn read_public_key(arg: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let text = if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_string()
    };
    proof::parse_public_key(text.trim()).map_err(|e| anyhow::anyhow!("public key: {e}"))
}

async fn explain(
    ticket: &str,
    user: Option<&str>,
    config_path: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load_for(config_path, Purpose::Explain)?;
    let policy = Policy::load(&config)?;
    let jira = JiraClient::new(&config.jira)?;
    let t = jira.issue(ticket).await?;
    let operator = format!("cli:{}", operator_name());
    let who = match user {
        Some(u) => policy::Who::Jira(Some(u)),
        None => policy::Who::Operator(operator.as_str()),
    };
    let req = policy::Request {
        ticket: &t,
        who,
        approved_by: None,
    };
    let verdict = policy.decide(&req, &jira).await;
    let ledger = ledger_for(&config, &policy).await.ok().flatten();
    let explanation =
        worker::explain::Explanation::new(&policy, &config, &t, verdict, ledger.as_deref()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", explanation.render());
    }
    Ok(if explanation.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
