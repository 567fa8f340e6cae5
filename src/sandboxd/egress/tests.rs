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
    let e = upstream_head(&t, ["Content-Length: 1", "Content-Length: 2"].into_iter()).unwrap_err();
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
