//! The `drafter` binary: parse the command line, set up logging and the process, run the command (`src/cli/`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    cli::logging::init_logging(args.log_json);
    set_git_timeouts();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            // A last line of defence: no message quoting a URL prints its credentials.
            eprintln!("error: {}", drafter::config::redact_url(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// libgit2 waits forever on a silent server by default, which would pin a job (and its blocking thread) for good.
fn set_git_timeouts() {
    // SAFETY: these set process-global libgit2 options; they are called once, before any thread uses libgit2.
    let result = unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(30_000)
            .and_then(|_| git2::opts::set_server_timeout_in_milliseconds(300_000))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not set git network timeouts");
    }
}
