//! The host's HTTP gate on arbitrary request targets and header values: the route table, the
//! plugin-route path checks, the `Host` check and the client address. Properties:
//! - the route table is exact: a route with a name renders back to the very path it was read from,
//!   ids never hold a `/`, and the `/metrics` route class agrees with the route;
//! - `plugin_target` accepts exactly what a reference model of the documented rule accepts, and a
//!   path it hands a plugin, percent-decoded strictly or as leniently as the SDK does, never holds
//!   a `.` or `..` segment, an empty segment but a trailing one, a backslash or NUL; resolving dot
//!   segments (RFC 3986 §5.2.4) leaves it unchanged;
//! - an accepted `Host` is an IP literal or one of the device's names, written only with name and
//!   port characters, and its own `http://` origin is same-origin with it;
//! - the client address is the peer unless the peer is a trusted proxy, and then an untrusted
//!   address written in `X-Forwarded-For`.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use toru::internals::http::{
    ApiRoute, HostNames, OpenRoute, Route, class_of, client_ip, host_name, plugin_target,
    same_origin,
};
use toru_plugin_api::protocol::percent_decode;

/// The path an API route names, if it names exactly one.
fn render(r: &ApiRoute) -> Option<String> {
    use ApiRoute::*;
    Some(match r {
        Metrics => "/metrics".into(),
        Me => "/api/auth/me".into(),
        Logout => "/api/auth/logout".into(),
        Password => "/api/auth/password".into(),
        System => "/api/system".into(),
        SafeModeLeave => "/api/system/safe-mode/leave".into(),
        Events => "/api/events".into(),
        Plugins => "/api/plugins".into(),
        Rescan => "/api/plugins/rescan".into(),
        Plugin(id) => format!("/api/plugins/{id}"),
        PluginAction(id, a) => format!("/api/plugins/{id}/{}", a.as_str()),
        Logs(id) => format!("/api/plugins/{id}/logs"),
        FollowLogs(id) => format!("/api/plugins/{id}/logs/follow"),
        PluginEvents(id) => format!("/api/plugins/{id}/events"),
        Kv(id) => format!("/api/plugins/{id}/kv"),
        Bundle(id) => format!("/api/plugins/{id}/bundle.js"),
        Forward(after) => format!("/api/plugins/route/{after}"),
        PackageUpload => "/api/packages/upload".into(),
        PackageConfirm(t) => format!("/api/packages/upload/{t}/confirm"),
        PackageCancel(t) => format!("/api/packages/upload/{t}"),
        Versions(id) => format!("/api/plugins/{id}/versions"),
        Rollback(id) => format!("/api/plugins/{id}/rollback"),
        Remove(id) => format!("/api/plugins/{id}/remove"),
        Settings(id) => format!("/api/plugins/{id}/settings"),
        Security(id) => format!("/api/plugins/{id}/security"),
        Trust => "/api/trust".into(),
        TrustKey(k) => format!("/api/trust/{k}"),
        Licenses => "/api/licenses".into(),
        License(id) => format!("/api/licenses/{id}"),
        SystemUpdate => "/api/system/update".into(),
        UpdateUpload => "/api/system/update/upload".into(),
        UpdateInstall(t) => format!("/api/system/update/upload/{t}/install"),
        UpdateCancel(t) => format!("/api/system/update/upload/{t}"),
        Reboot => "/api/system/reboot".into(),
        Unknown => return None,
    })
}

fn check_route(path: &str) {
    let class = class_of(path);
    match Route::of(path) {
        Route::Open(OpenRoute::Ui) => {
            assert!(path != "/metrics" && !path.starts_with("/api/"), "{path:?}");
            assert_eq!(class, "ui");
        }
        Route::Open(OpenRoute::Health) => assert_eq!(path, "/api/health"),
        Route::Open(OpenRoute::Setup) => assert_eq!(path, "/api/auth/setup"),
        Route::Open(OpenRoute::Login) => assert_eq!(path, "/api/auth/login"),
        Route::Api(r) => {
            assert!(path == "/metrics" || path.starts_with("/api/"), "{path:?}");
            if let Some(named) = render(&r) {
                assert_eq!(named, path, "{r:?}");
            }
            use ApiRoute::*;
            match &r {
                Plugin(id)
                | PluginAction(id, _)
                | Logs(id)
                | FollowLogs(id)
                | PluginEvents(id)
                | Kv(id)
                | Bundle(id)
                | PackageConfirm(id)
                | PackageCancel(id)
                | Versions(id)
                | Rollback(id)
                | Remove(id)
                | Settings(id)
                | Security(id)
                | TrustKey(id)
                | License(id)
                | UpdateInstall(id)
                | UpdateCancel(id) => assert!(!id.contains('/'), "{r:?}"),
                _ => {}
            }
            let want = match r {
                Forward(_) => "plugin",
                Metrics => "metrics",
                _ if path.starts_with("/api/auth/") => "auth",
                _ => "api",
            };
            assert_eq!(class, want, "{path:?}");
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 percent-decoding; `None` for `%` not followed by two hex digits.
fn strict_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex(bytes.next()?)?;
            let lo = hex(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// The rule as documented (`docs/API.md`, `checks::rest_ok`), written independently: a route
/// segment of `[A-Za-z0-9._-]+` but `.` and `..`; each segment of the rest well encoded, UTF-8 once
/// decoded, not `.` or `..`, holding no `/`, `\`, NUL or `%` once decoded, and empty only last.
fn model_accepts(after: &str) -> bool {
    let (route, rest) = after.split_once('/').unwrap_or((after, ""));
    let route_ok = !route.is_empty()
        && route != "."
        && route != ".."
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let segs: Vec<&str> = rest.split('/').collect();
    route_ok
        && segs.iter().enumerate().all(|(i, seg)| {
            let Some(d) = strict_decode(seg) else {
                return false;
            };
            if d.is_empty() {
                return i + 1 == segs.len();
            }
            match String::from_utf8(d) {
                Ok(t) => t != "." && t != ".." && !t.contains(['/', '\\', '\0', '%']),
                Err(_) => false,
            }
        })
}

/// RFC 3986 §5.2.4: resolve `.` and `..` segments.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// What a plugin sees, decoded one way or another: `/`, then segments that are never dot
/// segments, empty only last, and free of backslash and NUL.
fn check_plugin_path(decoded: &str) {
    let rest = decoded
        .strip_prefix('/')
        .expect("the plugin path starts with /");
    let segs: Vec<&str> = rest.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        assert!(*seg != "." && *seg != "..", "dot segment in {decoded:?}");
        assert!(
            !seg.is_empty() || i + 1 == segs.len(),
            "empty segment in {decoded:?}"
        );
        assert!(!seg.contains(['\\', '\0']), "{decoded:?}");
    }
}

fn check_forward(after: &str, query: Option<&str>) {
    let target = plugin_target(after, query);
    assert_eq!(target.is_some(), model_accepts(after), "{after:?}");
    let Some((route, path)) = target else { return };
    let (route_want, rest) = after.split_once('/').unwrap_or((after, ""));
    assert_eq!(route, route_want);
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    assert_eq!(p, format!("/{rest}"));
    assert_eq!(q, query);
    assert_eq!(remove_dot_segments(p), p, "dot segments reach the plugin");
    let strict = strict_decode(p).expect("an accepted path is well encoded");
    check_plugin_path(&String::from_utf8(strict).expect("an accepted path decodes to UTF-8"));
    check_plugin_path(&percent_decode(p));
}

fn check_host(value: &str) {
    let names = HostNames::new(Some("toru-pi"), &["toru.example.org".to_string()]);
    if names.allows(value) {
        let name = host_name(value).expect("an allowed Host has a name");
        let known = ["localhost", "toru-pi", "toru-pi.local", "toru.example.org"];
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            name.parse::<IpAddr>().is_ok() || known.contains(&lower.as_str()),
            "{value:?}"
        );
        assert!(
            value
                .trim()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)),
            "{value:?}"
        );
        assert!(
            same_origin(&format!("http://{}", value.trim()), value),
            "{value:?}"
        );
    }
    let peer: SocketAddr = "10.0.0.1:5000".parse().expect("literal");
    let proxy: IpAddr = "10.0.0.1".parse().expect("literal");
    let other_proxy: IpAddr = "10.0.0.2".parse().expect("literal");
    assert_eq!(
        client_ip(peer, Some(value), &[]),
        proxy,
        "an untrusted peer is the client"
    );
    let ip = client_ip(peer, Some(value), &[proxy, other_proxy]);
    if ip != proxy {
        assert!(ip != other_proxy, "{value:?}");
        let written = value
            .split(',')
            .filter_map(|e| e.trim().parse::<IpAddr>().ok());
        let canonical = |a: IpAddr| match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            v4 => v4,
        };
        assert!(written.map(canonical).any(|w| w == ip), "{value:?} → {ip}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // The request target as hyper hands it over: the path, then the query after the first `?`.
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };
    check_route(path);
    if let Route::Api(ApiRoute::Forward(after)) = Route::of(path) {
        check_forward(&after, query);
    }
    // The rest of a plugin route directly too, so the fuzzer need not find the prefix first.
    check_forward(path, query);
    check_host(input);
});
