//! The address ranges the proxy never connects to, and the operator's narrow escape hatch
//! (`sandbox.egress_allow_addresses`), apart from the proxy so the host side can check configuration with them.

use super::*;

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
