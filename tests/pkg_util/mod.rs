//! Helpers shared by the package tests (`package_faults`, `package_refusals`, `package_install`):
//! a host with a trusted key and an admin token, stress packages signed by that key, the upload
//! endpoint, and what the disk and the API say about an installed package.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::package::{HOST_TRIPLE, PackageDir, RawTar, generate_key};
use crate::support::{Bins, Host, HostOpts, Resp, TempDir, eventually};

/// The config of a package test host: a short probation, plus `extra` lines in `[packages]`.
pub fn config(extra: &str) -> String {
    format!("[packages]\nprobation_secs = 1\n{extra}")
}

/// A signing key pair made by `toru key generate`, in its own temp dir.
pub struct Key {
    /// The secret key file.
    pub secret: PathBuf,
    /// The public key file.
    pub public: PathBuf,
    /// The temp dir holding both (removed on drop).
    pub dir: TempDir,
}

impl Key {
    /// A fresh key named `name`.
    pub fn new(bins: &Bins, name: &str) -> Key {
        let dir = TempDir::new("key").unwrap();
        let (secret, public) = generate_key(bins, &dir.0, name).unwrap();
        Key {
            secret,
            public,
            dir,
        }
    }

    /// Trust it on `h` (`toru trust add`); panics with stderr when refused.
    pub fn trust(&self, h: &Host) {
        let o = h.cli(&["trust", "add", self.public.to_str().unwrap()], None);
        assert!(o.status.success(), "trust add: {}", stderr(&o));
    }

    /// Its key id, as the `.pub` file's comment gives it (`minisign public key: KEYID`).
    pub fn id(&self) -> String {
        let text = std::fs::read_to_string(&self.public).unwrap();
        let first = text.lines().next().unwrap_or_default();
        first
            .rsplit(' ')
            .next()
            .filter(|id| id.len() == 16)
            .unwrap_or_else(|| panic!("no key id in {first:?}"))
            .to_string()
    }

    /// A `.minisig` text over `bytes`, as `minisign -S` writes it (prehashed).
    pub fn sign(&self, bytes: &[u8]) -> String {
        let text = std::fs::read_to_string(&self.secret).unwrap();
        let sk = minisign::SecretKeyBox::from_string(&text)
            .unwrap()
            .into_unencrypted_secret_key()
            .unwrap();
        let pk = minisign::PublicKey::from_secret_key(&sk).unwrap();
        minisign::sign(Some(&pk), &sk, bytes, Some("file:test.toru"), None)
            .unwrap()
            .into_string()
    }
}

/// The `manifest.toml` of a stress package as `PackageDir::stress` writes it (entry `stress` for
/// this machine, `files = ["stress.json"]`); tests edit it with `replace`.
pub fn stress_manifest(id: &str, version: &str) -> String {
    format!(
        "id = \"{id}\"\nname = \"Stress (ok)\"\nversion = \"{version}\"\nauthor = \"tests\"\n\
         icon = \"🧪\"\nroute = \"/{id}\"\nprotocol = \"1.1\"\nmin_host = \">=0.1\"\n\
         files = [\"stress.json\"]\n\n[entry]\n{HOST_TRIPLE} = \"stress\"\n"
    )
}

/// A package written entry by entry: `manifest.toml` first, then what `rest` adds.
pub fn raw_package(manifest: &str, rest: impl FnOnce(RawTar) -> RawTar) -> Vec<u8> {
    rest(RawTar::new().file("manifest.toml", manifest.as_bytes())).finish()
}

/// `n` bytes that do not compress (xorshift64*, seeded).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A stress package `id` `version` in `mode` (see `plugins/stress`), packed in `dir` and signed by
/// `key` (unsigned with `None`); the `.toru` path (its `.minisig` beside it when signed).
pub fn stress(
    bins: &Bins,
    dir: &Path,
    id: &str,
    version: &str,
    mode: &str,
    key: Option<&Key>,
) -> PathBuf {
    stress_with(bins, dir, id, version, mode, key, "")
}

/// [`stress`] with `tables` appended to its manifest (e.g. a `[settings]` schema).
pub fn stress_with(
    bins: &Bins,
    dir: &Path,
    id: &str,
    version: &str,
    mode: &str,
    key: Option<&Key>,
    tables: &str,
) -> PathBuf {
    let src = dir.join(format!("src-{id}-{version}-{mode}"));
    let p = PackageDir::stress(bins, &src, id, version, mode).unwrap();
    if !tables.is_empty() {
        let manifest = format!("{}\n{tables}", p.manifest().unwrap());
        p.file("manifest.toml", manifest.as_bytes()).unwrap();
    }
    let out = dir.join(format!("{id}-{version}-{mode}.toru"));
    p.pack_ok(bins, key.map(|k| k.secret.as_path()), &out)
        .unwrap();
    out
}

/// The `.minisig` text beside `pkg`.
pub fn signature_of(pkg: &Path) -> String {
    let mut p = pkg.as_os_str().to_owned();
    p.push(".minisig");
    std::fs::read_to_string(PathBuf::from(p)).unwrap()
}

/// Finish setup (`toru passwd`: the API answers nothing else before) and create an admin API
/// token (`toru token create`) on the running host; the token.
pub fn admin_token(h: &Host) -> String {
    let o = h.cli(&["passwd"], Some("package tests password\n"));
    assert!(o.status.success(), "passwd: {}", stderr(&o));
    let o = h.cli(&["token", "create", "tests", "--role", "admin"], None);
    assert!(o.status.success(), "token create: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    text.split_whitespace()
        .find(|w| w.starts_with("toru_"))
        .unwrap_or_else(|| panic!("no token in {text:?}"))
        .to_string()
}

/// An API request with the admin bearer token (and a JSON body).
pub fn api(h: &Host, token: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let auth = format!("Bearer {token}");
    let body = body.map(Value::to_string);
    h.http(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("X-Toru-Csrf", "1"),
        ],
        body.as_deref().map(str::as_bytes),
    )
}

/// `POST /api/packages/upload` with `bytes` and the `.minisig` text `sig` (base64 in
/// `X-Toru-Signature`; none: unsigned).
pub fn upload(h: &Host, token: &str, bytes: &[u8], sig: Option<&str>) -> Resp {
    let auth = format!("Bearer {token}");
    let b64 = sig.map(|s| base64::engine::general_purpose::STANDARD.encode(s));
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/octet-stream"),
        ("X-Toru-Csrf", "1"),
    ];
    if let Some(b) = &b64 {
        headers.push(("X-Toru-Signature", b.as_str()));
    }
    h.http("POST", "/api/packages/upload", &headers, Some(bytes))
}

/// Upload then confirm; the confirm's answer (the upload must be accepted).
pub fn install_http(h: &Host, token: &str, pkg: &Path, allow_downgrade: bool) -> Resp {
    let bytes = std::fs::read(pkg).unwrap();
    let sig = signature_of(pkg);
    let r = upload(h, token, &bytes, Some(&sig));
    assert_eq!(r.status, 201, "upload {}: {}", pkg.display(), r.text());
    let t = r.json()["upload"].as_str().unwrap().to_string();
    api(
        h,
        token,
        "POST",
        &format!("/api/packages/upload/{t}/confirm"),
        Some(&json!({"allow_downgrade": allow_downgrade})),
    )
}

/// `toru plugin <verb> PKG [args]` (install or update) against `h`.
pub fn cli_install(h: &Host, verb: &str, pkg: &Path, args: &[&str]) -> Output {
    let mut all = vec!["plugin", verb, pkg.to_str().unwrap()];
    all.extend_from_slice(args);
    h.cli(&all, None)
}

/// `cli_install` that must succeed.
pub fn cli_install_ok(h: &Host, verb: &str, pkg: &Path) {
    let o = cli_install(h, verb, pkg, &[]);
    assert!(
        o.status.success(),
        "toru plugin {verb} {}: {}\nlog:\n{}",
        pkg.display(),
        stderr(&o),
        h.log()
    );
}

/// The CLI's stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The CLI's stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `GET /api/plugins/{id}` (200 expected).
pub fn plugin(h: &Host, token: &str, id: &str) -> Value {
    let r = api(h, token, "GET", &format!("/api/plugins/{id}"), None);
    assert_eq!(r.status, 200, "GET /api/plugins/{id}: {}", r.text());
    r.json()
}

/// Wait until plugin `id` is ready with a pid; the plugin object.
pub fn wait_ready(h: &Host, token: &str, id: &str) -> Value {
    eventually(&format!("{id} to be ready"), || {
        let r = api(h, token, "GET", &format!("/api/plugins/{id}"), None);
        (r.status == 200 && r.json()["state"] == "ready" && r.json()["pid"].is_u64())
            .then(|| r.json())
    })
}

/// The pid of a plugin object.
pub fn pid_of(p: &Value) -> u32 {
    u32::try_from(p["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {p}"))).unwrap()
}

/// The executable process `pid` runs (`/proc/PID/exe`); under qemu-user (the `aarch64` stage)
/// that is the emulator, so the program is the first file named on its command line after it.
pub fn exe_of(pid: u32) -> PathBuf {
    try_exe_of(pid).unwrap()
}

/// [`exe_of`], `None` for a process that is gone.
pub fn try_exe_of(pid: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let emulated = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("qemu-"));
    if !emulated {
        return Some(exe);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .map(|a| PathBuf::from(String::from_utf8_lossy(a).into_owned()))
        .filter(|a| a.is_absolute() && a.is_file())
        .filter_map(|a| a.canonicalize().ok())
        // The emulator is named first, by a link (binfmt_misc's interpreter path).
        .find(|a| *a != exe)
}

/// `POST /api/plugins/{id}/kv` set, acknowledged (200).
pub fn kv_set(h: &Host, token: &str, id: &str, key: &str, value: &str) {
    let r = api(
        h,
        token,
        "POST",
        &format!("/api/plugins/{id}/kv"),
        Some(&json!({"action": "set", "key": key, "value": value})),
    );
    assert_eq!(r.status, 200, "kv set {key}: {}", r.text());
}

/// `POST /api/plugins/{id}/kv` get: the value (`None` if absent).
pub fn kv_get(h: &Host, token: &str, id: &str, key: &str) -> Option<String> {
    let r = api(
        h,
        token,
        "POST",
        &format!("/api/plugins/{id}/kv"),
        Some(&json!({"action": "get", "key": key})),
    );
    assert_eq!(r.status, 200, "kv get {key}: {}", r.text());
    r.json()["value"].as_str().map(str::to_string)
}

/// A KV write made by the plugin itself: `PUT /kv/<key>` on the stress plugin's route, which it
/// turns into a protocol `kv` set and answers once the host acknowledged it.
pub fn plugin_kv_set(h: &Host, token: &str, id: &str, key: &str, value: &str) {
    let auth = format!("Bearer {token}");
    let r = h.http(
        "PUT",
        &format!("/api/plugins/route/{id}/kv/{key}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "text/plain"),
            ("X-Toru-Csrf", "1"),
        ],
        Some(value.as_bytes()),
    );
    assert_eq!(r.status, 200, "plugin kv set {key}: {}", r.text());
    assert_eq!(r.json()["ok"], true, "{}", r.text());
}

/// `GET /api/plugins/{id}/settings` (200 expected): schema, values (secrets `null`),
/// `secrets_set`.
pub fn settings(h: &Host, token: &str, id: &str) -> Value {
    let r = api(
        h,
        token,
        "GET",
        &format!("/api/plugins/{id}/settings"),
        None,
    );
    assert_eq!(r.status, 200, "GET settings of {id}: {}", r.text());
    r.json()
}

/// `PUT /api/plugins/{id}/settings` with `values` (200 expected); the answer.
pub fn set_settings(h: &Host, token: &str, id: &str, values: &Value) -> Value {
    let r = api(
        h,
        token,
        "PUT",
        &format!("/api/plugins/{id}/settings"),
        Some(values),
    );
    assert_eq!(r.status, 200, "PUT settings of {id}: {}", r.text());
    r.json()
}

/// The entries of `dir` (names, sorted); empty when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The packages dir of `h` (`<data-dir>/packages`, the default).
pub fn packages_dir(h: &Host) -> PathBuf {
    h.data_dir.join("packages")
}

/// The version folders of package `id` on disk.
pub fn versions_on_disk(h: &Host, id: &str) -> Vec<String> {
    entries(&packages_dir(h).join(id))
}

/// The plugin ids that have a folder in the packages dir (`.staging` is not one).
pub fn packages_on_disk(h: &Host) -> Vec<String> {
    entries(&packages_dir(h))
        .into_iter()
        .filter(|e| !e.starts_with('.'))
        .collect()
}

/// What is left in `.staging`.
pub fn staging(h: &Host) -> Vec<String> {
    entries(&packages_dir(h).join(".staging"))
}

/// The events of plugin `id`, newest first.
pub fn events(h: &Host, token: &str, id: &str) -> Vec<Value> {
    let r = api(
        h,
        token,
        "GET",
        &format!("/api/plugins/{id}/events?limit=200"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// Start a host on `root` (fresh when `None`) with `config` and `env`.
pub fn start(root: Option<PathBuf>, config: &str, env: &[(&str, &str)]) -> Host {
    Host::start(opts(root, config, env))
}

/// The options [`start`] uses.
pub fn opts(root: Option<PathBuf>, config: &str, env: &[(&str, &str)]) -> HostOpts {
    HostOpts {
        root,
        config: Some(config.to_string()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..HostOpts::default()
    }
}
