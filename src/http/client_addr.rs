//! The client address of a request, decided in one place: the TCP peer, or,
//! when the peer is a trusted proxy, the address that proxy reported in
//! `X-Forwarded-For`. The [`observe`](super::middleware::observe) middleware
//! stores the result on every request as a [`ClientAddr`] extension; limits
//! and log lines read it from there.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;

/// Where a request came from. Unspecified (`0.0.0.0`) when the connection's
/// peer is unknown, as for a router called in-process without a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl Default for ClientAddr {
    fn default() -> Self {
        Self(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// Most `X-Forwarded-For` hops examined, right to left: a chain of trusted
/// proxies is short, and the header's length is the client's choice.
const MAX_HOPS: usize = 16;

/// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`). Empty by
/// default: then the header is ignored and the client is always the peer.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, String> {
        let nets = list
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(nets.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client address of `req`, from the peer address the server stored
    /// as `ConnectInfo` and the request's headers.
    pub fn client_addr(&self, req: &Request) -> ClientAddr {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        self.resolve(peer, req.headers())
    }

    /// The peer, unless it is trusted: then the rightmost `X-Forwarded-For`
    /// hop that is not itself a trusted proxy (each proxy appends the address
    /// it received the request from, so hops to the left of the first
    /// untrusted one are the client's own claims). A hop that does not parse
    /// ends the walk at the last trusted hop; a chain of trusted hops only
    /// yields its leftmost.
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientAddr {
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return ClientAddr::default();
        };
        if self.0.is_empty() || !self.trusts(peer) {
            return ClientAddr(peer);
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','))
            .take(MAX_HOPS);
        for hop in hops {
            let Some(ip) = parse_hop(hop.trim()) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        ClientAddr(client)
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// An address block: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!("invalid trusted proxy `{s}`: expected an address or a CIDR such as 10.0.0.0/8")
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| err())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "v4-mapped");
        assert!(!net.contains(ip("11.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let host: Cidr = "192.168.1.5".parse().unwrap();
        assert!(host.contains(ip("192.168.1.5")) && !host.contains(ip("192.168.1.6")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let none = TrustedProxies::default();
        let proxies = TrustedProxies::parse(&["10.0.0.0/24", "fd00::/8"]).unwrap();
        let h = xff(&["203.0.113.9"]);
        // No trusted proxies, or an untrusted peer: the header is ignored.
        assert_eq!(none.resolve(Some(ip("10.0.0.2")), &h).0, ip("10.0.0.2"));
        assert_eq!(
            proxies.resolve(Some(ip("198.51.100.1")), &h).0,
            ip("198.51.100.1")
        );
        // A trusted peer: the hop it reported.
        assert_eq!(
            proxies.resolve(Some(ip("10.0.0.2")), &h).0,
            ip("203.0.113.9")
        );
        // Spoofed hops left of the first untrusted one are ignored.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.7"]);
        assert_eq!(
            proxies.resolve(Some(ip("10.0.0.2")), &h).0,
            ip("203.0.113.9")
        );
        // Several header lines read as one list, in order.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.7"]);
        assert_eq!(
            proxies.resolve(Some(ip("10.0.0.2")), &h).0,
            ip("203.0.113.9")
        );
        // Ports and brackets.
        let h = xff(&["[2001:db8::5]:4711"]);
        assert_eq!(
            proxies.resolve(Some(ip("fd00::1")), &h).0,
            ip("2001:db8::5")
        );
        // Garbage ends the walk at the last trusted hop.
        let h = xff(&["203.0.113.9, garbage, 10.0.0.7"]);
        assert_eq!(proxies.resolve(Some(ip("10.0.0.2")), &h).0, ip("10.0.0.7"));
        // No header: the proxy itself.
        assert_eq!(
            proxies.resolve(Some(ip("10.0.0.2")), &HeaderMap::new()).0,
            ip("10.0.0.2")
        );
        // Unknown peer.
        assert_eq!(proxies.resolve(None, &h), ClientAddr::default());
    }

    #[test]
    fn a_long_chain_is_cut() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let chain = vec!["10.0.0.1"; 10_000].join(",");
        let h = xff(&[&format!("203.0.113.9,{chain}")]);
        // Only MAX_HOPS hops are read: the walk stops inside the trusted chain.
        assert_eq!(proxies.resolve(Some(ip("10.0.0.2")), &h).0, ip("10.0.0.1"));
    }
}
