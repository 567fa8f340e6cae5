//! The container side of the sandbox: what runs *inside* Docker, as the second binary `drafter-sandboxd`.
//!
//! Why apart from [`crate::sandbox`]: this code runs in a hostile place (the job's container, or the egress proxy's),
//! talks to nothing but its stdin/stdout and, for the proxy, its two networks, and must never see the runner's
//! configuration or secrets. So it imports nothing else from the crate; the host side ([`crate::sandbox`]) depends on
//! it for the wire format ([`proto`]) and the egress rules it hands the proxy ([`egress::EgressRules`]), never the
//! other way round.
//!
//! - [`daemon`]: the executor: runs each tool command as the agent's uid with the job's limits, and file operations
//!   with the agent's filesystem ids.
//! - [`proto`]: the framed request/response protocol the host-side client
//!   ([`crate::sandbox::executor_client::DaemonClient`]) speaks with [`daemon`].
//! - [`egress`]: the egress proxy of an `allowlist:` job, and the rules (hosts, refused address ranges) it enforces.

pub mod daemon;
pub mod egress;
pub mod proto;
