//! The client's address behind a reverse proxy: only when the TCP peer is one of
//! `--trusted-proxies` does it come from the header `--forwarded-header` names
//! (`X-Forwarded-For`, or `Forwarded`'s `for=`); the right-most hop that is not
//! itself a trusted proxy is the client. From any other peer, and the other header
//! always, are ignored: a proxy passes on what the client sent in it.

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::ForwardedHeader;

/// Whether a trusted proxy was seen sending only the header not configured.
static WARNED: AtomicBool = AtomicBool::new(false);
/// Whether a trusted proxy was seen forwarding a client whose address cannot be read.
static WARNED_UNREADABLE: AtomicBool = AtomicBool::new(false);

/// The address of every client a trusted proxy forwarded without one that can be
/// read (`for=unknown`, an obfuscated identifier, a header without a `for=`): they
/// share its per-address limits. Not the proxy's own address, which on loopback
/// would be exempt from them.
pub const UNREADABLE: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Parses one `--trusted-proxies` entry: a CIDR, or one address.
fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| net.contains(&ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether headers from this peer are believed.
pub fn is_trusted(peer: IpAddr, proxies: &[IpNet]) -> bool {
    !proxies.is_empty() && trusted(peer, proxies)
}

/// Whether a trusted proxy forwarded this request: the peer is one, and it wrote the
/// configured header (a browser cannot set it on a WebSocket upgrade, so a page that
/// reaches the server directly from a proxy's address does not pass for one).
pub fn forwarded_by_proxy(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ForwardedHeader,
) -> bool {
    is_trusted(peer, proxies) && headers.contains_key(header_names(header).0)
}

/// The header `header` names, and the other one.
fn header_names(header: ForwardedHeader) -> (&'static str, &'static str) {
    match header {
        ForwardedHeader::XForwardedFor => ("x-forwarded-for", "forwarded"),
        ForwardedHeader::Forwarded => ("forwarded", "x-forwarded-for"),
    }
}

/// The address of one `for=` value: `192.0.2.1`, `"[2001:db8::1]:4711"`,
/// `192.0.2.1:80`; `None` for `unknown` and obfuscated identifiers.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.rsplit_once(':')?.0.parse().ok())
}

/// The hops a header lists, left (the original client) to right (the last proxy).
fn hops(headers: &HeaderMap, name: &HeaderName, forwarded: bool) -> Vec<Option<IpAddr>> {
    // bytes that are not UTF-8 (a client's, passed on by its proxy) spoil only their
    // own element: the hops appended after them are read all the same
    let values = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let mut out = Vec::new();
    for value in values {
        for element in value.split(',') {
            if !forwarded {
                out.push(node_ip(element));
                continue;
            }
            // one element per hop: one without `for=` names no client, and a
            // client's own `for=` to its left must not be taken for it
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            });
            out.push(node.and_then(node_ip));
        }
    }
    out
}

/// The client's address: `peer` itself unless it is a trusted proxy; then the
/// right-most forwarded hop that is not a trusted proxy, or [`UNREADABLE`] when a hop
/// cannot be read or the header names none. A trusted proxy that sends no header is
/// itself the client.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    if !is_trusted(peer, proxies) {
        return peer;
    }
    let (name, other) = header_names(header);
    let list = hops(
        headers,
        &HeaderName::from_static(name),
        header == ForwardedHeader::Forwarded,
    );
    if list.is_empty() && headers.contains_key(other) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            proxy = %peer,
            "a trusted proxy sent {other} and no {name}: its clients count as the proxy's \
             own address; set --forwarded-header to the header it writes (warned once)"
        );
    }
    let unreadable = || {
        if !WARNED_UNREADABLE.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                proxy = %peer,
                "a trusted proxy forwarded a client whose address cannot be read from {name} \
                 (`unknown`, an obfuscated or zoned address, a unix socket, no `for=`): \
                 every such client shares the per-address limits of `::` (warned once)"
            );
        }
        UNREADABLE
    };
    if list.is_empty() {
        return match headers.contains_key(name) {
            true => unreadable(),
            false => peer,
        };
    }
    let mut client = peer;
    for hop in list.into_iter().rev() {
        let Some(ip) = hop else {
            return unreadable();
        };
        client = canonical(ip);
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter()
            .map(|c| crate::config::parse_cidr(c).unwrap())
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_count_only_from_trusted_peers() {
        let proxies = nets(&["10.0.0.0/8", "192.0.2.1"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            client_ip(ip("10.1.2.3"), &h, &proxies, XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("192.0.2.1"), &h, &proxies, XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("198.51.100.7"), &h, &proxies, XFF),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &[], XFF), ip("10.1.2.3"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.5"), &h, &proxies, XFF),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let proxies = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // a client-supplied first entry is not believed
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), ip("203.0.113.9"));
        // several header lines are one list
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), ip("203.0.113.9"));
        // every hop trusted: the left-most
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), ip("10.9.9.9"));
        // an unreadable hop: not the proxies that saw it, one address for all such
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.0.0.2")]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), UNREADABLE);
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), UNREADABLE);
        // no header: the proxy itself
        assert_eq!(client_ip(peer, &HeaderMap::new(), &proxies, XFF), peer);
    }

    /// Only the configured header is read: nginx appends to `X-Forwarded-For` and
    /// passes a client's own `Forwarded` on, which used to win (`for=127.0.0.1` made
    /// a client loopback, exempt from the per-address limits).
    #[test]
    fn only_the_configured_header_is_read() {
        let proxies = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let h = headers(&[
            (
                "forwarded",
                "for=127.0.0.1, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), ip("203.0.113.9"));
        let fwd = ForwardedHeader::Forwarded;
        assert_eq!(client_ip(peer, &h, &proxies, fwd), ip("2001:db8::7"));
        let h = headers(&[("forwarded", "proto=https;For=192.0.2.60:8080;by=10.0.0.1")]);
        assert_eq!(client_ip(peer, &h, &proxies, fwd), ip("192.0.2.60"));
        assert_eq!(client_ip(peer, &h, &proxies, XFF), peer);
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(peer, &h, &proxies, fwd), UNREADABLE);
        let h = headers(&[("forwarded", "proto=https")]);
        assert_eq!(client_ip(peer, &h, &proxies, fwd), UNREADABLE);
        // a client's own `for=` left of a hop without one is not the client
        let h = headers(&[("forwarded", "for=127.0.0.1, proto=https")]);
        assert_eq!(client_ip(peer, &h, &proxies, fwd), UNREADABLE);
    }

    /// Bytes that are not UTF-8 in a client's part of the header (nginx passes them
    /// on and appends the client's address to the same line) used to make the whole
    /// line unread: behind a loopback proxy the client was the proxy, exempt from
    /// every per-address limit. Now its own element is unreadable, and the hop
    /// appended after it is the client; nor is an unreadable client ever loopback.
    #[test]
    fn a_client_part_that_is_not_utf8_does_not_hide_the_hop_after_it() {
        let proxies = nets(&["127.0.0.1", "::1"]);
        let peer = ip("127.0.0.1");
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"\xC3\xA9, 203.0.113.9").unwrap();
        h.append("x-forwarded-for", line);
        assert_eq!(client_ip(peer, &h, &proxies, XFF), ip("203.0.113.9"));
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xC3\xA9").unwrap(),
        );
        let unread = client_ip(peer, &h, &proxies, XFF);
        assert_eq!(unread, UNREADABLE);
        assert!(!crate::config::is_loopback(unread));
    }

    #[test]
    fn cidrs_and_addresses_parse() {
        assert!(crate::config::parse_cidr("10.0.0.0/8").is_ok());
        assert!(crate::config::parse_cidr(" 192.0.2.1 ").is_ok());
        assert!(crate::config::parse_cidr("::1").is_ok());
        assert!(crate::config::parse_cidr("fd00::/8").is_ok());
        assert!(crate::config::parse_cidr("nope").is_err());
        assert!(crate::config::parse_cidr("10.0.0.0/33").is_err());
    }
}
