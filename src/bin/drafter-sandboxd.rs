//! `drafter-sandboxd`: the executor drafter starts inside every sandbox container. It serves the framed protocol of
//! `drafter::sandbox::proto` on stdin/stdout; see `drafter::sandbox::daemon` for what it does and why.

fn main() {
    if let Err(e) = drafter::sandbox::daemon::main_with_args(std::env::args().skip(1)) {
        eprintln!("drafter-sandboxd: {e}");
        std::process::exit(2);
    }
}
