//! Pure request checks, no I/O: is the `Host` one of ours (DNS rebinding), is a request same-origin
//! (CSRF), is a plugin-route path free of traversal tricks, which address is the client.
//! Called by `router` and `api`; unit-tested here, fuzzed through `toru::internals::http`
//! (`fuzz/fuzz_targets/http_path.rs`).

use std::net::{IpAddr, SocketAddr};

/// The names this device answers to, besides IP literals.
#[derive(Debug, Clone)]
pub struct HostNames {
    names: Vec<String>,
}

impl HostNames {
    /// `localhost`, the hostname, `<hostname>.local`, and `extra` (from `config.http.allowed_hosts`).
    pub fn new(hostname: Option<&str>, extra: &[String]) -> HostNames {
        let mut names = vec!["localhost".to_string()];
        let hostname = hostname
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        if let Some(h) = hostname {
            names.push(format!("{h}.local"));
            if let Some(short) = h.split('.').next().filter(|s| *s != h) {
                names.push(format!("{short}.local"));
                names.push(short.to_string());
            }
            names.push(h);
        }
        for e in extra {
            names.push(e.trim().trim_end_matches('.').to_ascii_lowercase());
        }
        HostNames { names }
    }

    /// Read the hostname from the kernel.
    pub fn from_system(extra: &[String]) -> HostNames {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        HostNames::new(hostname.as_deref(), extra)
    }

    /// Whether a `Host` header value names this device. IP literals are always accepted: a page
    /// whose origin is an IP address cannot be a rebinding attack (that needs a name the attacker
    /// controls). Names must be in the list.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&name)
    }
}

/// The name part of a `Host` value (`[::1]:8080` → `::1`, `dev.local:80` → `dev.local`).
pub fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || port_ok(after.strip_prefix(':')?)) {
            return None;
        }
        return Some(inside);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
    .filter(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    })
}

fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// `host[:port]` without the default port of `scheme`, lowercased.
fn normal_authority(authority: &str, scheme: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    match a.strip_suffix(default) {
        Some(stripped) if !stripped.ends_with(':') => stripped.to_string(),
        _ => a,
    }
}

/// Whether an `Origin` header value is the same origin as the `Host` the request was sent to
/// (scheme is not compared: behind a TLS proxy the browser's origin is `https`).
pub fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.trim().split_once("://") else {
        return false;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return false;
    }
    let scheme = scheme.to_ascii_lowercase();
    if authority.contains('/') {
        return false;
    }
    normal_authority(authority, &scheme) == normal_authority(host, &scheme)
        || normal_authority(authority, &scheme) == normal_authority(host, "http")
}

/// Why a state-changing request looks cross-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrfError {
    /// `Sec-Fetch-Site` says another site (or `Origin` is another origin).
    CrossSite,
    /// Neither `Origin` nor `Sec-Fetch-Site` was sent.
    NoOrigin,
    /// Neither a JSON body nor the custom header.
    NotJson,
}

impl CsrfError {
    /// A sentence for the error body.
    pub fn message(self) -> &'static str {
        match self {
            CsrfError::CrossSite => "cross-site request refused",
            CsrfError::NoOrigin => {
                "state-changing requests need an Origin or Sec-Fetch-Site header (or a bearer token)"
            }
            CsrfError::NotJson => {
                "state-changing requests need Content-Type: application/json or an X-Toru-Csrf header"
            }
        }
    }
}

/// The custom header the UI sends on every request; a cross-site form cannot set it.
pub(crate) const CSRF_HEADER: &str = "x-toru-csrf";

/// CSRF rule for a cookie-authenticated (or anonymous) state-changing request: a same-origin
/// `Origin` or `Sec-Fetch-Site: same-origin`, and a JSON body or the custom header.
pub(crate) fn csrf_check(
    host: &str,
    origin: Option<&str>,
    fetch_site: Option<&str>,
    content_type: Option<&str>,
    has_custom_header: bool,
) -> Result<(), CsrfError> {
    match fetch_site.map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if s == "same-origin" => {}
        Some(s) if s == "none" => {} // typed by the user; Origin decides below
        Some(_) => return Err(CsrfError::CrossSite),
        None => {}
    }
    match origin {
        Some(o) if !same_origin(o, host) => return Err(CsrfError::CrossSite),
        Some(_) => {}
        None if fetch_site.is_some_and(|s| s.trim().eq_ignore_ascii_case("same-origin")) => {}
        None => return Err(CsrfError::NoOrigin),
    }
    let json = content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if json || has_custom_header {
        Ok(())
    } else {
        Err(CsrfError::NotJson)
    }
}

/// A route segment (`/api/plugins/route/{route}/…`) as metadata allows it: `[A-Za-z0-9._-]+`, not
/// `.` or `..`. Anything percent-encoded is refused, so encoded traversal cannot slip through.
pub fn route_segment_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The rest of a plugin-route path (raw, still percent-encoded), which reaches the plugin as sent
/// or not at all: refused if a segment is empty (`a//b`, `//x`; a trailing `/` is fine), or is `.`
/// or `..` (also when encoded), or decodes to bytes that are not UTF-8 (so overlong forms such as
/// `%c0%ae` never reach a lenient decoder) or hold an encoded `/`, a backslash, NUL or a second
/// layer of encoding (`%25`).
pub fn rest_ok(rest: &str) -> bool {
    if rest.contains('\\') || rest.contains('\0') {
        return false;
    }
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        let ok = match percent_decode_bytes(seg) {
            None => false,
            Some(d) if d.is_empty() => last,
            Some(d) => {
                std::str::from_utf8(&d).is_ok()
                    && d != b"."
                    && d != b".."
                    && !d.iter().any(|b| matches!(b, b'/' | b'\\' | 0 | b'%'))
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Where `/api/plugins/route/{after}` goes (`after` raw, as the router cut it): the route segment
/// of the plugin, and the path the plugin is sent (`/{rest}`, then `?{query}`); `None` if
/// [`route_segment_ok`] or [`rest_ok`] refuses it.
pub fn plugin_target<'a>(after: &'a str, query: Option<&str>) -> Option<(&'a str, String)> {
    let (route, rest) = after.split_once('/').unwrap_or((after, ""));
    if !route_segment_ok(route) || !rest_ok(rest) {
        return None;
    }
    let mut path = format!("/{rest}");
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    Some((route, path))
}

/// Percent-decode a path segment; `None` for a malformed escape.
fn percent_decode_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits, nothing else: `from_str_radix` alone would also take `+e`.
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The client's address: the peer, unless the peer is a trusted proxy, then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !trusted.iter().any(|t| canonical(*t) == peer_ip) {
        return peer_ip;
    }
    let Some(xff) = forwarded_for else {
        return peer_ip;
    };
    for entry in xff.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|t| canonical(*t) == canonical(ip)) => continue,
            Ok(ip) => return canonical(ip),
            Err(_) => return peer_ip,
        }
    }
    peer_ip
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `content-type` → `Content-Type` (the form the original host sent to plugins).
pub(crate) fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = true;
    for c in name.chars() {
        if up {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        up = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let h = HostNames::new(Some("toru-pi\n"), &["toru.example.org".to_string()]);
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST",
            "toru-pi",
            "toru-pi.local:8080",
            "toru-pi.local.",
            "toru.example.org",
            "192.168.1.20:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[fe80::1]",
        ] {
            assert!(h.allows(ok), "{ok} should be allowed");
        }
        for bad in [
            "",
            "evil.com",
            "evil.com:8080",
            "toru-pi.evil.com",
            "localhost.evil.com",
            "localhost:80:80",
            "[::1",
            "[::1]x",
            "local host",
            "toru-pi.local:http",
        ] {
            assert!(!h.allows(bad), "{bad} should be refused");
        }
        let fq = HostNames::new(Some("pi.lan"), &[]);
        assert!(fq.allows("pi") && fq.allows("pi.lan") && fq.allows("pi.local"));
    }

    #[test]
    fn origins() {
        assert!(same_origin("http://localhost:8080", "localhost:8080"));
        assert!(same_origin("http://LOCALHOST:8080", "localhost:8080"));
        assert!(same_origin("http://pi.local", "pi.local:80"));
        assert!(same_origin("https://pi.example", "pi.example"));
        assert!(!same_origin("http://evil.com", "localhost:8080"));
        assert!(!same_origin("http://localhost:8081", "localhost:8080"));
        assert!(!same_origin("null", "localhost"));
        assert!(!same_origin("file://", "localhost"));
        assert!(!same_origin("http://localhost:8080/x", "localhost:8080"));
    }

    #[test]
    fn csrf_rules() {
        let h = "dev:8080";
        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            csrf_check(h, Some("http://dev:8080"), None, json, false),
            Ok(())
        );
        assert_eq!(csrf_check(h, None, Some("same-origin"), None, true), Ok(()));
        assert_eq!(
            csrf_check(h, Some("http://evil"), None, json, true),
            Err(CsrfError::CrossSite)
        );
        assert_eq!(
            csrf_check(h, Some("http://dev:8080"), Some("cross-site"), json, true),
            Err(CsrfError::CrossSite)
        );
        assert_eq!(
            csrf_check(h, None, Some("same-site"), json, true),
            Err(CsrfError::CrossSite)
        );
        assert_eq!(
            csrf_check(h, None, None, json, true),
            Err(CsrfError::NoOrigin)
        );
        assert_eq!(
            csrf_check(
                h,
                Some("http://dev:8080"),
                None,
                Some("application/x-www-form-urlencoded"),
                false
            ),
            Err(CsrfError::NotJson)
        );
        assert_eq!(
            csrf_check(h, Some("http://dev:8080"), None, Some("text/plain"), false),
            Err(CsrfError::NotJson)
        );
    }

    #[test]
    fn traversal_is_refused() {
        for ok in ["hello", "hello-rust", "a.b_c-1"] {
            assert!(route_segment_ok(ok), "{ok}");
        }
        for bad in ["", ".", "..", "%2e%2e", "a%2fb", "a\\b", "a\0", "a b", "é"] {
            assert!(!route_segment_ok(bad), "{bad:?}");
        }
        for ok in [
            "",
            "counter",
            "a/b/c",
            "x%20y",
            "kv/a%3Ab",
            "file.txt",
            "a..b",
            "items/",
            "caf%C3%A9",
        ] {
            assert!(rest_ok(ok), "{ok}");
        }
        for bad in [
            "..",
            "../etc/passwd",
            "a/../../b",
            "%2e%2e/x",
            "%2E%2e",
            ".%2e",
            "a%2f..",
            "a%2F%2E%2E",
            "a\\..\\b",
            "a%5c..",
            "a%00b",
            "a\0b",
            "%252e%252e",
            "a%zz",
            "a%2",
            ".",
            "/x",
            "a//b",
            "//",
            "%c0%ae",
            "%c0%ae%c0%ae/x",
            "%e0%80%ae",
            "a%ff",
        ] {
            assert!(!rest_ok(bad), "{bad:?}");
        }
    }

    /// Found by fuzzing (`http_path`): `%+e` passed as an escape, because `u8::from_str_radix`
    /// takes a leading `+`; the host judged byte 0x0e while a strict decoder sees `%+e` as written.
    #[test]
    fn an_escape_is_a_percent_and_two_hex_digits() {
        for bad in ["%+e", "a/%+0", "%-1", "%+", "% 1", "%1 "] {
            assert!(!rest_ok(bad), "{bad:?}");
        }
        assert!(rest_ok("%2B%2b/%3a"));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let spoof = Some("1.2.3.4");
        assert_eq!(
            client_ip(peer, spoof, &[]),
            proxy,
            "untrusted peer: XFF ignored"
        );
        assert_eq!(
            client_ip(peer, Some("9.9.9.9, 1.2.3.4"), &[proxy]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("1.2.3.4, 10.0.0.1"), &[proxy]),
            "1.2.3.4".parse::<IpAddr>().unwrap(),
            "chains of trusted proxies are skipped"
        );
        assert_eq!(client_ip(peer, Some("garbage"), &[proxy]), proxy);
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, None, &[]),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn header_names_in_title_case() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-toru-user"), "X-Toru-User");
        assert_eq!(title_case("accept"), "Accept");
    }
}
