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
//! - Never a raw IP address as the host, and never a destination that *resolves* to a loopback, private,
//!   link-local (cloud metadata), CGNAT, multicast or otherwise non-public address ([`refused_ip`]): the proxy
//!   resolves the name itself and connects to the address it checked, so DNS rebinding cannot steer it inward.
//!
//! # What it records
//! One [`ConnRecord`] per request, allowed or denied, as a JSON line on stdout, which the worker reads over the
//! attach stream and puts into the job's run statement. Host, port, method, bytes each way, the rule that decided;
//! never a path, a header or a body (they may carry whatever the agent put there).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// Why a destination address is refused, if it is: anything that is not a public unicast address.
pub fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.segments()[..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible")
            } else if seg0 == 0x64 && v6.segments()[1] == 0xff9b {
                Some("NAT64")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (CGNAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
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
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "DNS lookup timed out".to_string())?
            .map_err(|e| format!("DNS lookup failed: {e}"))?
            .collect();
    if let Some(ok) = addrs.iter().find(|a| refused_ip(a.ip()).is_none()) {
        return Ok(*ok);
    }
    match addrs.first() {
        Some(a) => Err(format!(
            "resolves to {} ({})",
            a.ip(),
            refused_ip(a.ip()).unwrap_or("refused")
        )),
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

/// The system resolver, with [`refused_ip`] applied.
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        resolve(host, port).await
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

/// One client connection: one request (plain HTTP is sent upstream with `Connection: close`).
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
    let text = String::from_utf8_lossy(&head[..end.min(head.len())]).into_owned();
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
    let target = match parse_target(first) {
        Ok(t) => t,
        Err(reason) => {
            record.rule = format!("refused: {reason}");
            deny(&mut stream, "400 Bad Request", reason).await;
            record.duration_ms = started.elapsed().as_millis() as u64;
            return Some(record);
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
            record.duration_ms = started.elapsed().as_millis() as u64;
            return Some(record);
        }
    };
    let addr = match resolver.resolve(&target.host, target.port).await {
        Ok(a) => a,
        Err(reason) => {
            record.rule = format!("refused: {reason}");
            deny(&mut stream, "403 Forbidden", &reason).await;
            record.duration_ms = started.elapsed().as_millis() as u64;
            return Some(record);
        }
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            record.rule = format!("{rule}; upstream connect failed: {e}");
            deny(&mut stream, "502 Bad Gateway", "could not connect upstream").await;
            record.duration_ms = started.elapsed().as_millis() as u64;
            return Some(record);
        }
        Err(_) => {
            record.rule = format!("{rule}; upstream connect timed out");
            deny(
                &mut stream,
                "504 Gateway Timeout",
                "upstream connect timed out",
            )
            .await;
            record.duration_ms = started.elapsed().as_millis() as u64;
            return Some(record);
        }
    };
    record.allowed = true;
    record.rule = rule;
    record.address = Some(addr.to_string());
    let leftover = head[end.min(head.len())..].to_vec();
    let (out, inn) = if target.method == "CONNECT" {
        if stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return Some(record);
        }
        relay(stream, upstream, &leftover).await
    } else {
        // Origin-form request line; hop-by-hop and proxy headers dropped; one request per connection.
        let mut req = format!(
            "{} {} HTTP/1.1\r\n",
            target.method,
            target.path.as_deref().unwrap_or("/")
        );
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "proxy-authorization"
                    | "proxy-connection"
                    | "connection"
                    | "keep-alive"
                    | "upgrade"
            ) {
                continue;
            }
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("Connection: close\r\n\r\n");
        let mut first = req.into_bytes();
        first.extend_from_slice(&leftover);
        relay(stream, upstream, &first).await
    };
    record.bytes_out = out;
    record.bytes_in = inn;
    record.duration_ms = started.elapsed().as_millis() as u64;
    Some(record)
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
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if rules.hosts.is_empty() {
        return Err("--hosts lists no host".into());
    }
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
        serve(listener, Arc::new(rules), emit, Arc::new(SystemResolver)).await;
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
        ] {
            assert!(refused_ip(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "151.101.2.137",
            "203.0.113.80",
            "2606:4700::1111",
        ] {
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
                Some(why) => Err(format!("resolves to {} ({why})", self.0)),
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
}
