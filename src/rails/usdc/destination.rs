//! Where the fetch proxy may connect on an agent's behalf. An agent names the URL, so the URL is
//! hostile: by default spendgate contacts only globally routable addresses, never loopback, private,
//! link-local (cloud metadata), multicast or reserved ones, whatever spelling the URL used. The
//! check is made on the addresses actually connected to: IP literals before the request (the URL
//! parser has already turned `2130706433`, `0x7f.1`, `127.1` or `127.0.0.1.` into `127.0.0.1`), and
//! names inside the HTTP client's resolver, so a name that resolves to a forbidden address, or
//! resolves differently a moment later, is refused too.
//!
//! An operator whose paid APIs run inside the network names them in `x402_private_destinations`:
//! CIDRs (`10.20.0.0/16`) and/or `host:port` pairs (`billing.internal:8443`, `127.0.0.1:9402`).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

/// A destination spendgate will not contact, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a destination spendgate contacts: {}", self.host, self.reason)
    }
}

impl std::error::Error for Refused {}

/// The private destinations an operator allowed; everything else that is not global is refused.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    nets: Vec<IpNet>,
    /// (host as the URL parser writes it, port).
    host_ports: Vec<(String, u16)>,
}

impl Destinations {
    /// `setting`: comma-separated CIDRs (or single addresses) and `host:port` pairs; empty allows none.
    pub fn parse(setting: &str) -> Result<Destinations, String> {
        let mut allowed = Destinations::default();
        for entry in setting.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                allowed.nets.push(net.trunc());
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                allowed.nets.push(IpNet::from(ip));
            } else {
                let url = Url::parse(&format!("http://{entry}/"))
                    .map_err(|_| format!("{entry:?} is neither a CIDR nor host:port"))?;
                let (Some(host), Some(port)) = (url.host_str(), url.port()) else {
                    return Err(format!("{entry:?}: a host needs its port, e.g. billing.internal:8443"));
                };
                allowed.host_ports.push((host.to_owned(), port));
            }
        }
        Ok(allowed)
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.host_ports.is_empty()
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        forbidden(ip).is_none() || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL before anything is sent. A literal address is checked here; a name is checked
    /// again by the resolver on every address it resolves to.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let refused = |reason: String| Refused { host: url.host_str().unwrap_or_default().to_owned(), reason };
        let host = url.host().ok_or_else(|| refused("the URL has no host".into()))?;
        let port = url.port_or_known_default().ok_or_else(|| refused("the URL has no port".into()))?;
        let name = url.host_str().unwrap_or_default();
        if self.host_ports.iter().any(|(h, p)| h == name && *p == port) {
            return Ok(());
        }
        if self.host_ports.iter().any(|(h, _)| h == name) {
            return Err(refused(format!("it is allowed as a private destination on other ports only, not {port}")));
        }
        let ip = match host {
            Host::Ipv4(v4) => IpAddr::V4(v4),
            Host::Ipv6(v6) => IpAddr::V6(v6),
            Host::Domain(_) => return Ok(()),
        };
        match forbidden(canonical(ip)) {
            Some(class) if !self.allows_ip(ip) => Err(refused(format!("{ip} is a {class} address"))),
            _ => Ok(()),
        }
    }

    /// An HTTP client that reaches only these destinations: no redirect is followed, no proxy from
    /// the environment is used (it would resolve names where the resolver cannot check them), and
    /// every name is resolved by the guarded resolver.
    pub fn client(&self, timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(self.resolver()))
            .build()
    }

    /// The HTTP client's resolver: resolves with the system's resolver and refuses a name any of
    /// whose addresses is forbidden (one bad record is enough to distrust the rest).
    pub fn resolver(&self) -> GuardedResolver {
        let exempt = self.host_ports.iter().map(|(h, _)| h.clone()).collect();
        GuardedResolver { allowed: Arc::new(self.clone()), exempt: Arc::new(exempt) }
    }
}

pub struct GuardedResolver {
    allowed: Arc<Destinations>,
    /// Names allowed as `host:port`; `check_url` has checked the port before the request.
    exempt: Arc<HashSet<String>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (allowed, exempt) = (self.allowed.clone(), self.exempt.clone());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !exempt.contains(&host.to_ascii_lowercase())
                && let Some(bad) = addrs.iter().find(|a| !allowed.allows_ip(a.ip()))
            {
                let ip = canonical(bad.ip());
                let class = forbidden(ip).unwrap_or("forbidden");
                let refusal = Refused { host, reason: format!("it resolves to {ip}, a {class} address") };
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The refusal inside an HTTP client error, if that is what stopped the request.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

/// An IPv6 address that embeds an IPv4 one (mapped `::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The class of a non-global address, None for a globally routable one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (\"this network\")",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private (RFC 1918)",
        (100, 64..=127, _) => "carrier-grade NAT",
        (169, 254, _) => "link-local (cloud metadata)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "6to4 relay anycast",
        (224..=239, ..) => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    Some(match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // IPv4-compatible (`::a.b.c.d`, deprecated): never a real destination.
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible",
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => return forbidden_v4(embedded(hi, lo)),
        // NAT64 reaches the embedded IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return forbidden_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64",
        [0x100, 0, 0, 0, ..] => "discard-only",
        // 6to4 reaches the IPv4 address in bits 16 to 48.
        [0x2002, hi, lo, ..] => return forbidden_v4(embedded(hi, lo)),
        [0x2001, 0xdb8, ..] | [0x3fff, 0..=0x0fff, ..] => "documentation",
        [0x2001, 0..=0x01ff, ..] => "IETF special-purpose (Teredo, ORCHID, …)",
        [0x5f00, ..] => "segment routing",
        [h, ..] if h & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        [h, ..] if h & 0xffc0 == 0xfe80 => "link-local",
        [h, ..] if h & 0xffc0 == 0xfec0 => "site-local",
        [h, ..] if h & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(d: &Destinations, url: &str) -> bool {
        d.check_url(&Url::parse(url).unwrap()).is_err()
    }

    #[test]
    fn every_spelling_of_an_internal_address_is_refused() {
        let none = Destinations::default();
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.0.0.1./",
            "http://127.000.000.001/",
            "http://0/",
            "http://0.0.0.0:8080/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://192.0.2.1/",
            "http://198.51.100.1/",
            "http://203.0.113.9/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[::8.8.8.8]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a00:1::1]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[fec0::1]/",
            "http://[ff02::1]/",
            "http://[2001:db8::1]/",
            "http://[2001::1]/",
            "https://127.0.0.1:8443/",
        ] {
            assert!(refused(&none, url), "{url} must be refused");
        }
        for url in [
            "https://93.184.215.14/",
            "http://8.8.8.8/",
            "http://[2606:4700::1111]/",
            "http://[64:ff9b::808:808]/",
            "http://[2002:808:808::]/",
            "https://api.example.com/x",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
        ] {
            assert!(!refused(&none, url), "{url} is global");
        }
    }

    #[test]
    fn an_operator_allows_private_destinations_by_cidr_or_host_and_port() {
        let d = Destinations::parse("10.20.0.0/16, 127.0.0.1:9402, billing.internal:8443, fd00::7").unwrap();
        assert!(!refused(&d, "http://10.20.3.4/"));
        assert!(refused(&d, "http://10.21.3.4/"));
        assert!(!refused(&d, "http://127.0.0.1:9402/paid"));
        assert!(!refused(&d, "http://2130706433:9402/paid"), "the same address, spelled otherwise");
        assert!(refused(&d, "http://127.0.0.1:9403/"), "another port of an allowed host");
        assert!(refused(&d, "http://127.0.0.1/"));
        assert!(!refused(&d, "https://billing.internal:8443/"));
        assert!(refused(&d, "https://billing.internal/"), "the name is allowed on its port only");
        assert!(!refused(&d, "http://[fd00::7]/"));
        assert!(refused(&d, "http://[fd00::8]/"));
        for bad in ["10.0.0.0/33", "billing.internal", "http://x", "a b:1"] {
            assert!(Destinations::parse(bad).is_err(), "{bad:?} must not parse");
        }
        assert!(Destinations::parse("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        let resolver = Destinations::default().resolver();
        let error = match resolver.resolve("localhost".parse().unwrap()).await {
            Err(e) => e,
            Ok(_) => panic!("localhost must be refused"),
        };
        let refusal = refusal_in(error.as_ref()).expect("a Refused inside");
        assert!(refusal.reason.contains("loopback"), "{refusal}");

        let allowed = Destinations::parse("127.0.0.0/8, ::1").unwrap().resolver();
        assert!(allowed.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
