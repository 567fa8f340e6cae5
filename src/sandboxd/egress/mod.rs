//! The egress proxy: the only way out of a sandbox whose policy grants `network = "allowlist:NAME"`.
//!
//! # Where it runs
//! In a companion container per job (`drafter-proxy-<job>`), started from the same image with the executor binary
//! in proxy mode (`drafter-sandboxd egress-proxy ...`), unprivileged, read-only, without capabilities. It sits on two
//! networks: Docker's default bridge (the way out) and the job's own network, which is `internal` (no route out)
//! and has no address on the host (`inhibit_ipv4`), so the job container can reach nothing but the proxy: not the
//! internet, not the host, not other jobs. The job container gets `HTTP_PROXY`/`HTTPS_PROXY` pointing at it, and
//! no resolver that answers for outside names.
//!
//! # What it allows
//! - `CONNECT host:443` (HTTPS, tunnelled as is) and plain HTTP in absolute form (`GET http://host/...`, port 80),
//!   when `host` is on the allowlist: an exact name or `*.suffix` (subdomains of `suffix`, not `suffix` itself).
//! - For plain HTTP, only the allowlist's methods when it names any (e.g. GET/HEAD/OPTIONS).
//! - Never a raw IP address as the host, and never a destination that *resolves* into a special range
//!   ([`SPECIAL_RANGES`], [`refused_ip`]: loopback, private, link-local (cloud metadata), CGNAT, multicast, 6to4,
//!   Teredo, NAT64, IPv4-mapped, site-local, ...): the proxy resolves the name itself and connects to the address it
//!   checked, so DNS rebinding cannot steer it inward. The refusal names the range.
//! - Plain HTTP is one request per connection, rebuilt (`upstream_head`): origin-form request line, `Host` from
//!   the checked URL (never the client's, which could name another tenant of the same CDN address), no hop-by-hop
//!   or proxy headers, `Connection: close`, and exactly the declared `Content-Length` body. Bytes after that
//!   (pipelining), `Transfer-Encoding` and head lines with stray control characters are refused (400); so are bytes
//!   sent after a `CONNECT` head before the tunnel is granted.
//!
//! # What it records
//! One [`ConnRecord`] per request, allowed or denied, as a JSON line on stdout, which the worker reads over the
//! attach stream and puts into the job's run statement. Host, port, method, bytes each way, the rule that decided;
//! never a path, a header or a body (they may carry whatever the agent put there).

mod ranges;

pub use ranges::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The port the proxy listens on inside its container.
pub const PROXY_PORT: u16 = 3128;
/// Largest request head read before refusing.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Time to connect upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A tunnel or response with no traffic either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections handled at once; more wait.
const MAX_CONNECTIONS: usize = 64;

/// The allowlist as the proxy applies it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EgressRules {
    /// The policy's allowlist name (recorded as the rule).
    pub name: String,
    /// Exact host names or `*.suffix`.
    pub hosts: Vec<String>,
    /// Plain-HTTP methods allowed; empty means any.
    pub methods: Vec<String>,
    /// CIDRs the runner's operator lets the proxy connect to although they are in a refused special range (the
    /// site's egress gateway, an internal mirror): `sandbox.egress_allow_addresses`, checked by [`allowance`].
    #[serde(default)]
    pub allow_addresses: Vec<String>,
}

/// One request through the proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnRecord {
    /// The host asked for, as given (lower-cased).
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// `CONNECT` or the plain-HTTP method.
    pub method: String,
    /// Whether it went through.
    pub allowed: bool,
    /// What decided: `egress.<name>` with the matching entry, or why it was refused.
    pub rule: String,
    /// The address connected to (allowed requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Bytes from the sandbox to the destination.
    pub bytes_out: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_in: u64,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: u64,
    /// How long the connection lasted.
    pub duration_ms: u64,
}

/// Which allowlist entry admits `host`, if any. `host` must already be lower-case.
pub fn host_allowed<'a>(rules: &'a EgressRules, host: &str) -> Option<&'a str> {
    rules.hosts.iter().map(String::as_str).find(|entry| {
        let entry_lc = entry.to_ascii_lowercase();
        match entry_lc.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == entry_lc,
        }
    })
}

/// The parsed first line (and host) of a request.
#[derive(Debug, PartialEq)]
struct Target {
    method: String,
    host: String,
    port: u16,
    /// For plain HTTP: the origin-form path to send upstream.
    path: Option<String>,
}

/// Parses `METHOD target HTTP/1.x`. CONNECT takes `host:port`; everything else an absolute `http://` URL.
fn parse_target(line: &str) -> Result<Target, &'static str> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("not HTTP/1.x");
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("malformed method");
    }
    if method == "CONNECT" {
        let (host, port) = target.rsplit_once(':').ok_or("CONNECT needs host:port")?;
        let port = port.parse::<u16>().map_err(|_| "bad port")?;
        return Ok(Target {
            method: method.into(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port,
            path: None,
        });
    }
    let url = url::Url::parse(target).map_err(|_| "plain HTTP needs an absolute http:// URL")?;
    if url.scheme() != "http" {
        return Err("only http:// URLs are proxied in plain form (use CONNECT for https)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL");
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("no host"),
    };
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target {
        method: method.into(),
        host,
        port: url.port().unwrap_or(80),
        path: Some(path),
    })
}

/// Request headers never sent upstream: the client's `Host` (rebuilt from the checked URL), hop-by-hop headers
/// (RFC 9110 section 7.6.1) and the proxy's own.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Refuses a head line with control characters: a bare CR or LF would end the line for some upstream parser and
/// smuggle a header (a second `Host`) past this one.
fn check_line(line: &str) -> Result<(), &'static str> {
    if line.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("control character in the request head");
    }
    Ok(())
}

/// The head sent upstream for a plain-HTTP request, and the length of the body the client declared.
///
/// The request line is rebuilt in origin form and `Host` from the checked URL, so a client cannot name one host to
/// the allowlist and another to the server behind the same address (CDNs serve many tenants per address). Dropped:
/// [`DROPPED_HEADERS`]. Refused: malformed or folded lines, control characters, conflicting `Content-Length`s and
/// any `Transfer-Encoding` (a chunked body's end is only known by parsing it; clients send `Content-Length` for
/// what they can buffer, which is every request an allowlist job needs). `Connection: close`: one request per
/// connection.
fn upstream_head<'a>(
    t: &Target,
    header_lines: impl Iterator<Item = &'a str>,
) -> Result<(Vec<u8>, u64), &'static str> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        t.method,
        t.path.as_deref().unwrap_or("/"),
        t.host
    );
    let mut body_len: Option<u64> = None;
    for line in header_lines {
        check_line(line)?;
        if line.starts_with([' ', '\t']) {
            return Err("folded header line");
        }
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err("malformed header name");
        }
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "transfer-encoding" => {
                return Err(
                    "Transfer-Encoding is not proxied (send the body with a Content-Length)",
                )
            }
            "content-length" => {
                let n = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "bad Content-Length")?;
                if body_len.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers");
                }
                if body_len.replace(n).is_some() {
                    continue;
                }
            }
            n if DROPPED_HEADERS.contains(&n) => continue,
            _ => {}
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    Ok((head.into_bytes(), body_len.unwrap_or(0)))
}

/// The decision before any connection is made: `Ok(rule)` or `Err(reason)`.
fn decide(rules: &EgressRules, t: &Target) -> Result<String, String> {
    if t.host.parse::<IpAddr>().is_ok() {
        return Err("raw IP address (the allowlist names hosts)".into());
    }
    match (t.method.as_str(), t.port) {
        ("CONNECT", 443) => {}
        ("CONNECT", p) => return Err(format!("CONNECT to port {p} (only 443)")),
        (_, 80) => {}
        (_, p) => return Err(format!("plain HTTP to port {p} (only 80)")),
    }
    let Some(entry) = host_allowed(rules, &t.host) else {
        return Err(format!("host not on egress.{}", rules.name));
    };
    if t.method != "CONNECT"
        && !rules.methods.is_empty()
        && !rules
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&t.method))
    {
        return Err(format!(
            "method {} not allowed by egress.{} (allowed: {})",
            t.method,
            rules.name,
            rules.methods.join(", ")
        ));
    }
    Ok(format!("egress.{}: {entry}", rules.name))
}

/// Resolves `host` and picks the first address that is not refused; the error names what it resolved to.
async fn resolve(host: &str, port: u16, allow: &[IpNet]) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "DNS lookup timed out".to_string())?
            .map_err(|e| format!("DNS lookup failed: {e}"))?
            .collect();
    if let Some(ok) = addrs
        .iter()
        .find(|a| refused_ip_allowing(a.ip(), allow).is_none())
    {
        return Ok(*ok);
    }
    match addrs.first() {
        Some(a) => Err(match refused_ip_allowing(a.ip(), allow) {
            Some(why) => why.resolved(a.ip()),
            None => format!("resolves to {} (refused)", a.ip()),
        }),
        None => Err("DNS lookup found no address".into()),
    }
}

/// Serves until the listener fails; each record goes to `emit`.
pub async fn serve(
    listener: TcpListener,
    rules: Arc<EgressRules>,
    emit: Arc<dyn Fn(&ConnRecord) + Send + Sync>,
    resolver: Arc<dyn Resolve>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (rules, emit, resolver) = (rules.clone(), emit.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(record) = handle(stream, &rules, resolver.as_ref()).await {
                emit(&record);
            }
            drop(permit);
        });
    }
}

/// Name resolution, replaceable in tests (the proxy's own resolves with the system resolver).
#[async_trait::async_trait]
pub trait Resolve: Send + Sync {
    /// The address to connect to for `host:port`, or why not.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String>;
}

/// The system resolver, with [`refused_ip_allowing`] applied for the operator's allowances.
pub struct SystemResolver {
    /// The ranges allowed although special (see [`allowance`]).
    pub allow: Vec<IpNet>,
}

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        resolve(host, port, &self.allow).await
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before the request head ended");
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err("request head too large");
        }
    }
}

async fn deny(stream: &mut TcpStream, status: &str, reason: &str) {
    let body = format!("drafter egress proxy: {reason}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Drafter-Egress: denied\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The record's duration, stamped on every way out of [`handle`].
fn finish(mut record: ConnRecord, started: Instant) -> Option<ConnRecord> {
    record.duration_ms = started.elapsed().as_millis() as u64;
    Some(record)
}

/// One client connection: one request. Bytes after the request head (beyond a declared body) are refused: there
/// is no second request on a connection, and nothing is tunnelled before the tunnel is granted.
async fn handle(
    mut stream: TcpStream,
    rules: &EgressRules,
    resolver: &dyn Resolve,
) -> Option<ConnRecord> {
    let started = Instant::now();
    let at_ms = now_ms();
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => {
            deny(&mut stream, "400 Bad Request", reason).await;
            return None;
        }
        Err(_) => return None,
    };
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len())
        + 4;
    let end = end.min(head.len());
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let leftover = &head[end..];
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut record = ConnRecord {
        host: String::new(),
        port: 0,
        method: String::new(),
        allowed: false,
        rule: String::new(),
        address: None,
        bytes_out: 0,
        bytes_in: 0,
        at_ms,
        duration_ms: 0,
    };
    let target = match check_line(first).and_then(|()| parse_target(first)) {
        Ok(t) => t,
        Err(reason) => {
            record.rule = format!("refused: {reason}");
            deny(&mut stream, "400 Bad Request", reason).await;
            return finish(record, started);
        }
    };
    record.host = target.host.clone();
    record.port = target.port;
    record.method = target.method.clone();
    let rule = match decide(rules, &target) {
        Ok(rule) => rule,
        Err(reason) => {
            record.rule = format!("refused: {reason}");
            deny(&mut stream, "403 Forbidden", &reason).await;
            return finish(record, started);
        }
    };
    // Plain HTTP: the head sent upstream and the declared body; CONNECT: nothing may follow the head.
    let plain = if target.method == "CONNECT" {
        None
    } else {
        match upstream_head(&target, lines.filter(|l| !l.is_empty())) {
            Ok(h) => Some(h),
            Err(reason) => {
                record.rule = format!("refused: {reason}");
                deny(&mut stream, "400 Bad Request", reason).await;
                return finish(record, started);
            }
        }
    };
    let body_len = plain.as_ref().map_or(0, |(_, n)| *n);
    if leftover.len() as u64 > body_len {
        let reason = if plain.is_some() {
            "bytes after the request (one request per connection: no pipelining)"
        } else {
            "bytes after the CONNECT request (send them once the tunnel is established)"
        };
        record.rule = format!("refused: {reason}");
        deny(&mut stream, "400 Bad Request", reason).await;
        return finish(record, started);
    }
    let addr = match resolver.resolve(&target.host, target.port).await {
        Ok(a) => a,
        Err(reason) => {
            record.rule = format!("refused: {reason}");
            deny(&mut stream, "403 Forbidden", &reason).await;
            return finish(record, started);
        }
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            record.rule = format!("{rule}; upstream connect failed: {e}");
            deny(&mut stream, "502 Bad Gateway", "could not connect upstream").await;
            return finish(record, started);
        }
        Err(_) => {
            record.rule = format!("{rule}; upstream connect timed out");
            deny(
                &mut stream,
                "504 Gateway Timeout",
                "upstream connect timed out",
            )
            .await;
            return finish(record, started);
        }
    };
    record.allowed = true;
    record.rule = match special_range(addr.ip()) {
        // A special range the table does not refuse (documentation): said in the record.
        Some(r) => format!("{rule}; address in {} {}", r.name, r.net),
        None => rule,
    };
    record.address = Some(addr.to_string());
    let (out, inn) = match plain {
        None => {
            if stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return finish(record, started);
            }
            relay(stream, upstream, &[]).await
        }
        Some((mut first, body_len)) => {
            first.extend_from_slice(leftover);
            let rest = body_len - leftover.len() as u64;
            forward_request(stream, upstream, &first, rest).await
        }
    };
    record.bytes_out = out;
    record.bytes_in = inn;
    finish(record, started)
}

/// Plain HTTP: sends `first` (head and what came of the body), then exactly `rest` more body bytes from the client,
/// and relays the response until the upstream closes. Anything more the client sends is never read, so it never
/// reaches the upstream. Returns bytes (out, in).
async fn forward_request(
    client: TcpStream,
    mut upstream: TcpStream,
    first: &[u8],
    rest: u64,
) -> (u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    if upstream.write_all(first).await.is_err() {
        return (0, 0);
    }
    sent.fetch_add(first.len() as u64, Ordering::Relaxed);
    let (cr, cw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    let count = sent.clone();
    let body = async move {
        let mut body = cr.take(rest);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match tokio::time::timeout(IDLE_TIMEOUT, body.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        // The upstream's write half stays open (a half-close can read as an aborted request); the response ends
        // the exchange.
        std::future::pending::<()>().await;
        drop(uw);
    };
    tokio::select! {
        () = pipe(ur, cw, received.clone()) => {}
        () = body => {}
    }
    (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    )
}

/// Copies both ways until both sides are done or the connection idles out; returns bytes (out, in). `first` goes
/// upstream before anything else.
async fn relay(client: TcpStream, mut upstream: TcpStream, first: &[u8]) -> (u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    if !first.is_empty() {
        if upstream.write_all(first).await.is_err() {
            return (0, 0);
        }
        sent.fetch_add(first.len() as u64, Ordering::Relaxed);
    }
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pipe(cr, uw, sent.clone());
    let down = pipe(ur, cw, received.clone());
    let _ = tokio::join!(up, down);
    (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    )
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// `drafter-sandboxd egress-proxy --listen ADDR --name NAME --hosts a,b --methods GET,HEAD`: serves forever,
/// printing one JSON record per line on stdout.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> Result<(), String> {
    let mut listen = format!("0.0.0.0:{PROXY_PORT}");
    let mut rules = EgressRules::default();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |n: &str| args.next().ok_or(format!("{n} needs a value"));
        match a.as_str() {
            "--listen" => listen = value("--listen")?,
            "--name" => rules.name = value("--name")?,
            "--hosts" => rules.hosts = split_list(&value("--hosts")?),
            "--methods" => rules.methods = split_list(&value("--methods")?),
            "--allow-addresses" => rules.allow_addresses = split_list(&value("--allow-addresses")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if rules.hosts.is_empty() {
        return Err("--hosts lists no host".into());
    }
    let allow = rules
        .allow_addresses
        .iter()
        .map(|a| allowance(a))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("listening on {listen}: {e}"))?;
        eprintln!("drafter egress proxy on {listen} for egress.{}", rules.name);
        let emit: Arc<dyn Fn(&ConnRecord) + Send + Sync> = Arc::new(|r: &ConnRecord| {
            if let Ok(line) = serde_json::to_string(r) {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
        serve(
            listener,
            Arc::new(rules),
            emit,
            Arc::new(SystemResolver { allow }),
        )
        .await;
        Ok(())
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
