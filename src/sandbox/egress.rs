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

/// A special-purpose address range (IANA's IPv4 and IPv6 special-purpose registries, plus everything outside
/// IPv6 global unicast). One table for both families; the first entry that contains an address names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecialRange {
    /// What the range is, as the refusal names it.
    pub name: &'static str,
    /// The range.
    pub net: IpNet,
    /// Where an IPv4 address is embedded in the IPv6 one (0 = none), for naming it in the refusal.
    embeds_v4: u8,
}

const fn v4(name: &'static str, a: [u8; 4], len: u8) -> SpecialRange {
    SpecialRange {
        name,
        net: IpNet::V4(Ipv4Net::new_assert(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            len,
        )),
        embeds_v4: 0,
    }
}

const fn v6(name: &'static str, s: [u16; 8], len: u8) -> SpecialRange {
    SpecialRange {
        name,
        net: IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
            len,
        )),
        embeds_v4: 0,
    }
}

/// The IPv4 address is the last 32 bits.
const LOW32: u8 = 1;
/// The IPv4 address is bits 16..48 (6to4).
const SIXTOFOUR: u8 = 2;

const fn embedding(mut r: SpecialRange, at: u8) -> SpecialRange {
    r.embeds_v4 = at;
    r
}

/// Every special range, more specific entries before the ranges that contain them. Public unicast is whatever
/// matches no entry. Sources: https://www.iana.org/assignments/iana-ipv4-special-registry and
/// https://www.iana.org/assignments/iana-ipv6-special-registry.
pub const SPECIAL_RANGES: &[SpecialRange] = &[
    v4("broadcast", [255, 255, 255, 255], 32),
    v4("this network", [0, 0, 0, 0], 8),
    v4("private", [10, 0, 0, 0], 8),
    v4("shared address space (CGNAT)", [100, 64, 0, 0], 10),
    v4("loopback", [127, 0, 0, 0], 8),
    v4("link-local (cloud metadata)", [169, 254, 0, 0], 16),
    v4("private", [172, 16, 0, 0], 12),
    v4("IETF protocol assignments", [192, 0, 0, 0], 24),
    v4("6to4 relay anycast", [192, 88, 99, 0], 24),
    v4("private", [192, 168, 0, 0], 16),
    v4("benchmarking", [198, 18, 0, 0], 15),
    // Not routed on the internet, so nothing public lives there; a site whose egress gateway answers from one
    // allows that address with `sandbox.egress_allow_addresses`.
    v4("documentation (TEST-NET-1)", [192, 0, 2, 0], 24),
    v4("documentation (TEST-NET-2)", [198, 51, 100, 0], 24),
    v4("documentation (TEST-NET-3)", [203, 0, 113, 0], 24),
    v4("multicast", [224, 0, 0, 0], 4),
    v4("reserved", [240, 0, 0, 0], 4),
    v6("unspecified", [0, 0, 0, 0, 0, 0, 0, 0], 128),
    v6("loopback", [0, 0, 0, 0, 0, 0, 0, 1], 128),
    embedding(v6("IPv4-mapped", [0, 0, 0, 0, 0, 0xffff, 0, 0], 96), LOW32),
    embedding(
        v6("IPv4-translated", [0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
        LOW32,
    ),
    embedding(v6("IPv4-compatible", [0, 0, 0, 0, 0, 0, 0, 0], 96), LOW32),
    embedding(v6("NAT64", [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), LOW32),
    v6("NAT64 local-use", [0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    v6("discard-only", [0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    v6("Teredo", [0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
    v6("benchmarking", [0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
    v6("ORCHID", [0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
    v6("ORCHIDv2", [0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
    v6(
        "IETF protocol assignments",
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
    ),
    v6("documentation", [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    embedding(v6("6to4", [0x2002, 0, 0, 0, 0, 0, 0, 0], 16), SIXTOFOUR),
    v6("documentation", [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
    v6(
        "segment routing (SRv6) SIDs",
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
    ),
    v6("unique-local", [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    v6("link-local", [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    v6("site-local", [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    v6("multicast", [0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    // Global unicast is 2000::/3; the rest of the space is unassigned or one of the entries above.
    v6("outside global unicast", [0, 0, 0, 0, 0, 0, 0, 0], 3),
    v6("outside global unicast", [0x4000, 0, 0, 0, 0, 0, 0, 0], 2),
    v6("outside global unicast", [0x8000, 0, 0, 0, 0, 0, 0, 0], 1),
];

/// The special range `ip` is in, if any.
pub fn special_range(ip: IpAddr) -> Option<&'static SpecialRange> {
    SPECIAL_RANGES.iter().find(|r| r.net.contains(&ip))
}

/// Why a destination address is refused: the special range it is in (and, for ranges that embed an IPv4 address,
/// that address and its own range).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The range's name.
    pub name: &'static str,
    /// The range.
    pub net: IpNet,
    /// The embedded IPv4 address and its range's name, for IPv4-mapped, NAT64, 6to4 and the like.
    pub embedded: Option<(Ipv4Addr, Option<&'static str>)>,
}

impl Refusal {
    /// The refusal for a name that resolved to `ip`: `resolves to IP (NAME) in CIDR[, embedding V4 (NAME)]`.
    pub fn resolved(&self, ip: IpAddr) -> String {
        format!(
            "resolves to {ip} ({}) in {}{}",
            self.name,
            self.net,
            self.embedding()
        )
    }

    fn embedding(&self) -> String {
        match self.embedded {
            Some((v4, Some(name))) => format!(", embedding {v4} ({name})"),
            Some((v4, None)) => format!(", embedding {v4}"),
            None => String::new(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}{}", self.name, self.net, self.embedding())
    }
}

/// Why a destination address is refused, if it is: anything in a refused [`SPECIAL_RANGES`] entry. Rendered as
/// `resolves to IP (NAME) in CIDR`.
pub fn refused_ip(ip: IpAddr) -> Option<Refusal> {
    let range = special_range(ip)?;
    let embedded = match (ip, range.embeds_v4) {
        (IpAddr::V6(v6), LOW32) => Some(Ipv4Addr::from(v6.to_bits() as u32)),
        (IpAddr::V6(v6), SIXTOFOUR) => Some(Ipv4Addr::from((v6.to_bits() >> 80) as u32)),
        _ => None,
    };
    Some(Refusal {
        name: range.name,
        net: range.net,
        embedded: embedded.map(|a| (a, special_range(IpAddr::V4(a)).map(|r| r.name))),
    })
}

/// Ranges no operator allowance can open: the proxy's own machine, cloud metadata, nothing, everyone.
const NEVER_ALLOWED: &[&str] = &[
    "127.0.0.0/8",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "::1/128",
    "::/128",
    "fe80::/10",
    "ff00::/8",
    "::ffff:0:0/96",
];

/// Parses one `sandbox.egress_allow_addresses` entry (a CIDR, or a bare address for just that one), refusing any
/// that would open loopback, link-local (cloud metadata), unspecified, multicast or IPv4-mapped addresses.
pub fn allowance(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    let net = entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{entry}` is not an address or CIDR range"))?;
    for never in NEVER_ALLOWED {
        let never: IpNet = never
            .parse()
            .map_err(|_| format!("internal: `{never}` is not a CIDR"))?;
        if net.contains(&never.network()) || never.contains(&net.network()) {
            return Err(format!(
                "`{entry}` overlaps {never}, which the egress proxy never connects to"
            ));
        }
    }
    Ok(net)
}

/// [`refused_ip`], except for addresses inside one of the operator's `allow` ranges.
pub fn refused_ip_allowing(ip: IpAddr, allow: &[IpNet]) -> Option<Refusal> {
    let refusal = refused_ip(ip)?;
    if allow.iter().any(|n| n.contains(&ip)) {
        return None;
    }
    Some(refusal)
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
mod tests {
    use super::*;

    fn rules() -> EgressRules {
        EgressRules {
            name: "registries".into(),
            hosts: vec!["crates.io".into(), "*.crates.io".into()],
            allow_addresses: Vec::new(),
            methods: vec!["GET".into(), "HEAD".into()],
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_subdomain() {
        let r = rules();
        assert_eq!(host_allowed(&r, "crates.io"), Some("crates.io"));
        assert_eq!(host_allowed(&r, "index.crates.io"), Some("*.crates.io"));
        assert_eq!(host_allowed(&r, "a.b.crates.io"), Some("*.crates.io"));
        assert_eq!(host_allowed(&r, "evilcrates.io"), None);
        assert_eq!(host_allowed(&r, "crates.io.evil.com"), None);
        assert_eq!(host_allowed(&r, ".crates.io"), None);
    }

    #[test]
    fn inward_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "203.0.113.80",
        ] {
            assert!(refused_ip(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["1.1.1.1", "151.101.2.137", "2606:4700::1111"] {
            assert!(refused_ip(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn requests_are_parsed_and_decided() {
        let r = rules();
        let t = parse_target("CONNECT index.crates.io:443 HTTP/1.1").unwrap();
        assert_eq!(decide(&r, &t).unwrap(), "egress.registries: *.crates.io");
        let t = parse_target("GET http://crates.io/api?q=1 HTTP/1.1").unwrap();
        assert_eq!(t.path.as_deref(), Some("/api?q=1"));
        assert!(decide(&r, &t).is_ok());
        for (line, why) in [
            ("POST http://crates.io/x HTTP/1.1", "method POST"),
            ("CONNECT 1.1.1.1:443 HTTP/1.1", "raw IP"),
            ("CONNECT [::1]:443 HTTP/1.1", "raw IP"),
            ("CONNECT crates.io:22 HTTP/1.1", "port 22"),
            ("GET http://crates.io:8080/ HTTP/1.1", "port 8080"),
            ("CONNECT evil.com:443 HTTP/1.1", "not on egress.registries"),
            ("GET http://127.0.0.1/ HTTP/1.1", "raw IP"),
        ] {
            let t = parse_target(line).unwrap();
            let e = decide(&r, &t).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        for bad in [
            "GET /relative HTTP/1.1",
            "GET https://crates.io/ HTTP/1.1",
            "GET http://u:p@crates.io/ HTTP/1.1",
            "get http://crates.io/ HTTP/1.1",
            "GET http://crates.io/ SPDY/3",
            "CONNECT crates.io HTTP/1.1",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    /// Resolves every name to one fixed address (the "rebinding" case: an allowed name pointing inward).
    struct Fixed(IpAddr);

    #[async_trait::async_trait]
    impl Resolve for Fixed {
        async fn resolve(&self, _host: &str, port: u16) -> Result<SocketAddr, String> {
            match refused_ip(self.0) {
                Some(why) => Err(why.resolved(self.0)),
                None => Ok(SocketAddr::new(self.0, port)),
            }
        }
    }

    #[tokio::test]
    async fn the_proxy_refuses_and_records() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        let emit: Arc<dyn Fn(&ConnRecord) + Send + Sync> =
            Arc::new(move |r: &ConnRecord| sink.lock().unwrap().push(r.clone()));
        tokio::spawn(serve(
            listener,
            Arc::new(rules()),
            emit,
            Arc::new(Fixed("169.254.169.254".parse().unwrap())),
        ));
        let ask = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let out = ask("CONNECT index.crates.io:443 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("169.254.169.254"),
            "{out}"
        );
        let out = ask("CONNECT example.com:443 HTTP/1.1\r\n\r\n").await;
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("not on egress"),
            "{out}"
        );
        let out = ask("nonsense\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let recs = records.lock().unwrap().clone();
        assert_eq!(recs.len(), 3, "{recs:?}");
        assert!(recs.iter().all(|r| !r.allowed));
        assert_eq!(recs[0].host, "index.crates.io");
        assert!(recs[0].rule.contains("link-local"), "{}", recs[0].rule);
        // Records never carry paths or headers.
        let json = serde_json::to_string(&recs).unwrap();
        assert!(!json.contains("Host: x"));
    }

    #[test]
    fn every_special_range_is_named_and_refused() {
        for (ip, name) in [
            ("0.1.2.3", "this network 0.0.0.0/8"),
            ("10.1.2.3", "private 10.0.0.0/8"),
            ("100.64.0.1", "shared address space (CGNAT) 100.64.0.0/10"),
            ("100.127.255.254", "CGNAT"),
            ("127.0.0.2", "loopback 127.0.0.0/8"),
            (
                "169.254.169.254",
                "link-local (cloud metadata) 169.254.0.0/16",
            ),
            ("172.31.255.1", "private 172.16.0.0/12"),
            ("192.0.0.8", "IETF protocol assignments 192.0.0.0/24"),
            ("192.88.99.1", "6to4 relay anycast 192.88.99.0/24"),
            ("192.168.0.1", "private 192.168.0.0/16"),
            ("198.19.255.255", "benchmarking 198.18.0.0/15"),
            ("224.0.0.251", "multicast 224.0.0.0/4"),
            ("250.1.1.1", "reserved 240.0.0.0/4"),
            ("255.255.255.255", "broadcast 255.255.255.255/32"),
            ("::", "unspecified ::/128"),
            ("::1", "loopback ::1/128"),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped ::ffff:0.0.0.0/96, embedding 127.0.0.1 (loopback)",
            ),
            (
                "::ffff:1.1.1.1",
                "IPv4-mapped ::ffff:0.0.0.0/96, embedding 1.1.1.1",
            ),
            ("::ffff:0:a9fe:a9fe", "IPv4-translated"),
            (
                "::10.0.0.1",
                "IPv4-compatible ::/96, embedding 10.0.0.1 (private)",
            ),
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64 64:ff9b::/96, embedding 169.254.169.254 (link-local",
            ),
            ("64:ff9b:1::a00:1", "NAT64 local-use 64:ff9b:1::/48"),
            ("100::1", "discard-only 100::/64"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo 2001::/32"),
            ("2001:2::1", "benchmarking 2001:2::/48"),
            ("2001:10::1", "ORCHID 2001:10::/28"),
            ("2001:20::1", "ORCHIDv2 2001:20::/28"),
            ("2001:1ff::1", "IETF protocol assignments 2001::/23"),
            ("2001:db8::1", "documentation 2001:db8::/32"),
            (
                "2002:7f00:1::1",
                "6to4 2002::/16, embedding 127.0.0.1 (loopback)",
            ),
            (
                "2002:a9fe:a9fe::1",
                "6to4 2002::/16, embedding 169.254.169.254",
            ),
            ("3fff:1::1", "documentation 3fff::/20"),
            ("5f00::1", "segment routing (SRv6) SIDs 5f00::/16"),
            ("fd00::1", "unique-local fc00::/7"),
            ("fc00::1", "unique-local fc00::/7"),
            ("fe80::1", "link-local fe80::/10"),
            ("fec0::1", "site-local fec0::/10"),
            ("ff02::1", "multicast ff00::/8"),
            ("1000::1", "outside global unicast ::/3"),
            ("4000::1", "outside global unicast 4000::/2"),
            ("c000::1", "outside global unicast 8000::/1"),
        ] {
            let why = refused_ip(ip.parse().unwrap()).unwrap_or_else(|| panic!("{ip} allowed"));
            assert!(why.to_string().contains(name), "{ip}: {why}");
        }
        // Every entry of the table, at both ends of its range.
        for r in SPECIAL_RANGES {
            for ip in [r.net.network(), r.net.broadcast()] {
                assert!(refused_ip(ip).is_some(), "{ip} ({})", r.name);
            }
        }
        // Public neighbours of the ranges.
        for ip in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:200::1",
            "2003::1",
            "3000::1",
        ] {
            assert!(refused_ip(ip.parse().unwrap()).is_none(), "{ip}");
        }
        let doc = refused_ip("203.0.113.80".parse().unwrap()).unwrap();
        assert_eq!(doc.name, "documentation (TEST-NET-3)");
        let why = refused_ip("2002:a00:1::1".parse().unwrap()).unwrap();
        assert_eq!(
            why.resolved("2002:a00:1::1".parse().unwrap()),
            "resolves to 2002:a00:1::1 (6to4) in 2002::/16, embedding 10.0.0.1 (private)"
        );
    }

    #[test]
    fn an_operator_allowance_opens_only_what_it_names_and_never_the_host_or_metadata() {
        let allow = vec![
            allowance("203.0.113.80").unwrap(),
            allowance("10.8.0.0/16").unwrap(),
        ];
        assert!(refused_ip_allowing("203.0.113.80".parse().unwrap(), &allow).is_none());
        assert!(refused_ip_allowing("203.0.113.81".parse().unwrap(), &allow).is_some());
        assert!(refused_ip_allowing("10.8.3.4".parse().unwrap(), &allow).is_none());
        assert!(refused_ip_allowing("10.9.0.1".parse().unwrap(), &allow).is_some());
        // A mapped or 6to4 spelling of an allowed address is not the address: still refused.
        assert!(refused_ip_allowing("::ffff:203.0.113.80".parse().unwrap(), &allow).is_some());
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "169.254.0.0/15",
            "0.0.0.0/0",
            "::/0",
            "::1",
            "fe80::1",
            "ff02::1",
            "224.0.0.1",
            "::ffff:10.0.0.1",
            "not an address",
        ] {
            assert!(allowance(bad).is_err(), "{bad} must not be allowable");
        }
    }

    #[test]
    fn the_upstream_head_is_rebuilt_from_the_checked_url() {
        let t = parse_target("POST http://crates.io/api?q=1 HTTP/1.1").unwrap();
        let lines = [
            "Host: other.example",
            "HOST: other.example:80",
            "Proxy-Authorization: Basic c2VjcmV0",
            "Proxy-Connection: keep-alive",
            "Connection: keep-alive, X-Hop",
            "Keep-Alive: timeout=5",
            "Upgrade: h2c",
            "TE: trailers",
            "Content-Length: 5",
            "content-length: 5",
            "X-Custom: a:b",
        ];
        let (head, body) = upstream_head(&t, lines.into_iter()).unwrap();
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "POST /api?q=1 HTTP/1.1\r\nHost: crates.io\r\nContent-Length: 5\r\nX-Custom: a:b\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(body, 5);
        let get = parse_target("GET http://crates.io/ HTTP/1.0").unwrap();
        let (head, body) = upstream_head(&get, std::iter::empty()).unwrap();
        assert!(String::from_utf8(head)
            .unwrap()
            .starts_with("GET / HTTP/1.1\r\nHost: crates.io\r\n"));
        assert_eq!(body, 0);
        for (line, why) in [
            ("X: a\nHost: other.example", "control character"),
            ("X: a\rHost: other.example", "control character"),
            ("X: a\0", "control character"),
            (" Host: other.example", "folded"),
            ("\tHost: other.example", "folded"),
            ("Host other.example", "malformed header line"),
            ("Bad Name: x", "malformed header name"),
            (": x", "malformed header name"),
            ("Transfer-Encoding: chunked", "Transfer-Encoding"),
            ("Content-Length: -1", "bad Content-Length"),
        ] {
            let e = upstream_head(&t, [line].into_iter()).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
        let e =
            upstream_head(&t, ["Content-Length: 1", "Content-Length: 2"].into_iter()).unwrap_err();
        assert!(e.contains("conflicting"), "{e}");
        assert!(check_line("GET http://crates.io/\n HTTP/1.1").is_err());
    }

    /// A local origin: answers 200 to each connection after reading whatever arrives within 300 ms, and keeps every
    /// connection's bytes.
    async fn origin() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let g = g.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                    })
                    .await;
                    g.lock().unwrap().push(seen);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        (addr, got)
    }

    /// The address check, injected: every name "resolves" to the local origin.
    struct To(SocketAddr);

    #[async_trait::async_trait]
    impl Resolve for To {
        async fn resolve(&self, _host: &str, _port: u16) -> Result<SocketAddr, String> {
            Ok(self.0)
        }
    }

    #[tokio::test]
    async fn a_forged_host_or_a_second_request_never_reaches_the_origin() {
        let (origin_addr, got) = origin().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        let emit: Arc<dyn Fn(&ConnRecord) + Send + Sync> =
            Arc::new(move |r: &ConnRecord| sink.lock().unwrap().push(r.clone()));
        let any_method = EgressRules {
            allow_addresses: Vec::new(),
            methods: Vec::new(),
            ..rules()
        };
        tokio::spawn(serve(
            listener,
            Arc::new(any_method),
            emit,
            Arc::new(To(origin_addr)),
        ));
        // `later` is sent 100 ms after `req`, while the origin is still reading.
        let ask = |req: &'static [u8], later: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            if !later.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = s.write_all(later).await;
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };

        // A forged Host: the origin gets the checked host, and none of the proxy's or hop-by-hop headers.
        let out = ask(
            b"GET http://crates.io/x HTTP/1.1\r\nHost: other.example\r\nProxy-Authorization: Basic eA==\r\n\r\n",
            b"",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // A body of the declared length goes through; what the client sends after it does not.
        let out = ask(
            b"POST http://crates.io/p HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello",
            b"worldGET http://crates.io/late HTTP/1.1\r\nHost: other.example\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let seen: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(
            seen,
            [
                "GET /x HTTP/1.1\r\nHost: crates.io\r\nConnection: close\r\n\r\n",
                "POST /p HTTP/1.1\r\nHost: crates.io\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhelloworld",
            ]
        );

        // Pipelined requests, bytes before a CONNECT is granted, a smuggled header, a chunked body: refused
        // before anything is connected.
        for req in [
            &b"GET http://crates.io/x HTTP/1.1\r\nHost: crates.io\r\n\r\nGET http://crates.io/y HTTP/1.1\r\nHost: other.example\r\n\r\n"[..],
            b"POST http://crates.io/x HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /y HTTP/1.1\r\n\r\n",
            b"CONNECT index.crates.io:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
            b"GET http://crates.io/x HTTP/1.1\r\nX: a\nHost: other.example\r\n\r\n",
            b"POST http://crates.io/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let out = ask(req, b"").await;
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            got.lock().unwrap().len(),
            2,
            "a refused request reached the origin"
        );
        let recs = records.lock().unwrap().clone();
        assert_eq!(recs.len(), 7, "{recs:?}");
        assert!(recs[..2].iter().all(|r| r.allowed && r.host == "crates.io"));
        assert_eq!(
            recs[0].bytes_out,
            "GET /x HTTP/1.1\r\nHost: crates.io\r\nConnection: close\r\n\r\n".len() as u64
        );
        assert!(recs[2].rule.contains("no pipelining"), "{}", recs[2].rule);
        assert!(
            recs[4].rule.contains("once the tunnel is established"),
            "{}",
            recs[4].rule
        );
        assert!(recs[2..].iter().all(|r| !r.allowed));
    }
}
