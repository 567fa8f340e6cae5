//! `drafter check-config`.

use std::process::ExitCode;

use drafter::config::{Config, Purpose};

/// `drafter check-config`: what the file resolves to, every problem with the commands it stops, and a verdict.
pub fn check_config(path: &std::path::Path, purpose: Option<Purpose>) -> anyhow::Result<ExitCode> {
    let checked = Config::check_file(path)?;
    let name = path.display();
    if let Some(c) = checked.display() {
        println!("{c:#?}");
    }
    for p in &checked.problems {
        println!("{name}, {p}");
        println!("    blocks: {}", p.blocked().join("; "));
    }
    let n = checked.problems.len();
    let problems = match n {
        0 => "no problems".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    let (blocked, free): (Vec<Purpose>, Vec<Purpose>) = Purpose::ALL
        .into_iter()
        .partition(|p| checked.blocking(*p).next().is_some());
    let labels = |list: &[Purpose]| {
        list.iter()
            .map(|p| {
                // A worker stopped only for its webhook secret is shown as such.
                let only_webhooks = *p == Purpose::Serve
                    && checked
                        .blocking(*p)
                        .all(|x| x.blocked().contains(&"serve (webhooks)"));
                if only_webhooks {
                    "serve (webhooks)"
                } else {
                    p.label()
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let ok = match purpose {
        None if n == 0 => {
            println!("{name}: no problems; every command can start");
            true
        }
        None => {
            println!(
                "{name}: {problems}; blocked: {}; can start: {}",
                labels(&blocked),
                if free.is_empty() {
                    "nothing".to_string()
                } else {
                    labels(&free)
                }
            );
            false
        }
        Some(p) => {
            let stopping = checked.blocking(p).count();
            if stopping == 0 {
                match n {
                    0 => println!("{name}: {} can start (no problems)", p.label()),
                    1 => println!(
                        "{name}: {} can start; the problem above stops other commands",
                        p.label()
                    ),
                    n => println!(
                        "{name}: {} can start; the {n} problems above stop other commands",
                        p.label()
                    ),
                }
                true
            } else {
                println!(
                    "{name}: {} cannot start: {stopping} of the {problems} above stop it",
                    p.label()
                );
                false
            }
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
