//! drafter: a self-hosted, sandboxed coding-agent runner for Jira tickets.
//!
//! A ticket assigned to the bot becomes a job; the job clones only allowlisted repositories, runs a model tool-use
//! loop inside a locked-down Docker container, records every model call as a signed receipt, and opens a **draft**
//! pull request through a service account that cannot merge.
//!
//! # Layout
//! Data flows one way: intake -> queue -> worker -> (repo, sandbox, agent, forge, jira, policy) -> proof; the
//! allowed imports between modules are a table in ARCHITECTURE.md that a unit test (`tidy`) enforces.
//! - [`config`]: the TOML file, environment overrides, secrets by reference.
//! - [`jira`]: Jira Cloud REST v3: tickets in (ADF to Markdown), comments out (ADF).
//! - [`ids`]: the job id, one validity rule for the queue, the sandbox's container names and the CLI.
//! - [`keys`]: Ed25519 public keys in drafter's hex form, and key ids.
//! - [`repo`]: git through libgit2: clone, branch, commit, push, with the token only in the credential callback.
//! - [`sandbox`]: one hardened Docker container per job, workspace in and out as tar streams; tool calls through
//!   `drafter-sandboxd` inside it (or `docker exec`); a warm pool.
//! - [`sandboxd`]: the container side: the executor daemon, its wire protocol, the egress proxy.
//! - [`bench`]: `drafter bench`: the sandbox against the Docker CLI, and the queue's throughput.
//! - [`model`]: provider encodings (Anthropic, OpenAI-compatible) behind one receipt-emitting client.
//! - [`proof`]: the runner key, the receipt chain and its verification.
//! - [`agent`]: the tool-use loop and its tools; talks to the sandbox, never to Docker.
//! - [`forge`]: GitHub: the can't-merge check and the draft pull request.
//! - [`intake`]: Jira webhook payloads and JQL poll hits -> queue jobs (who triggered, dedup keys), and the poll loop.
//! - [`queue`]: the durable job queue (SQLite embedded, PostgreSQL for many hosts): dedup, leases, retries.
//! - [`server`]: HTTP: Jira webhooks in, health and readiness out.
//! - [`service`]: the `drafter serve` process: queue, policy reload, sandbox, server, poller and worker pool, run
//!   on a listener until a shutdown future resolves.
//! - [`worker`]: one job's lifecycle, emitting typed events that the CLI and the ticket listen to.
#![deny(missing_docs)]

pub mod agent;
pub mod bench;
pub mod config;
pub mod forge;
pub mod ids;
pub mod intake;
pub mod jira;
pub mod keys;
pub mod model;
pub mod policy;
pub mod proof;
pub mod queue;
pub mod repo;
pub mod sandbox;
pub mod sandboxd;
pub mod server;
pub mod service;
pub mod worker;

#[cfg(test)]
mod tidy;
