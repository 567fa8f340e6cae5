//! `drafter-sandboxd`: the executor drafter starts inside every sandbox container. It serves the framed protocol of
//! `drafter::sandboxd::proto` on stdin/stdout; see `drafter::sandboxd::daemon` for what it does and why.
//!
//! `drafter-sandboxd egress-proxy ...` is the egress proxy of an `allowlist:` job, in its own container (see
//! `drafter::sandboxd::egress`).

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let result = if args.peek().map(String::as_str) == Some("egress-proxy") {
        drafter::sandboxd::egress::main_with_args(args.skip(1))
    } else {
        drafter::sandboxd::daemon::main_with_args(args)
    };
    if let Err(e) = result {
        eprintln!("drafter-sandboxd: {e}");
        std::process::exit(2);
    }
}
