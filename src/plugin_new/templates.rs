//! The files `toru plugin new` writes, embedded in the binary (`include_str!` of `templates/` and of
//! the Python SDK), and their rendering: `@KEY@` placeholders replaced by values. Pure: no I/O.
//!
//! The templates are whole files a newcomer reads, so they stay readable as they are; the values
//! put into them are a plugin id (`[a-z0-9-]`), a name made from it, and TOML strings this module
//! escapes ([`toml_string`]).

/// The frontend stub (both languages).
const BUNDLE_JS: &str = include_str!("templates/bundle.js.tmpl");
/// The `[settings]` example (both manifests).
const SETTINGS: &str = include_str!("templates/settings.toml.tmpl");

const RUST_MANIFEST: &str = include_str!("templates/rust/manifest.toml.tmpl");
const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml.tmpl");
const RUST_MAIN: &str = include_str!("templates/rust/main.rs.tmpl");
const RUST_CARGO_CONFIG: &str = include_str!("templates/rust/cargo-config.toml.tmpl");
const RUST_README: &str = include_str!("templates/rust/README.md.tmpl");
const RUST_GITIGNORE: &str = include_str!("templates/rust/gitignore.tmpl");

const PYTHON_MANIFEST: &str = include_str!("templates/python/manifest.toml.tmpl");
const PYTHON_PLUGIN: &str = include_str!("templates/python/plugin.py.tmpl");
const PYTHON_README: &str = include_str!("templates/python/README.md.tmpl");
const PYTHON_GITIGNORE: &str = include_str!("templates/python/gitignore.tmpl");
/// The Python SDK, as this `toru` carries it (one file, standard library only).
const PYTHON_SDK: &str = include_str!("../../toru-plugin-api/python/toru_plugin.py");

/// The target a device runs: the Raspberry Pi image's `toru` (static, any 64-bit Linux).
pub(crate) const BOARD_TRIPLE: &str = "aarch64-unknown-linux-musl";
/// The version a new plugin starts at.
pub(crate) const FIRST_VERSION: &str = "0.1.0";
/// The author a new plugin names until its author changes it (in the manifest and the source).
pub(crate) const AUTHOR: &str = "Your name";
/// The icon a new plugin shows.
pub(crate) const ICON: &str = "🧩";

/// What varies between generated plugins.
#[derive(Debug, Clone)]
pub(crate) struct Values {
    /// The plugin id (also the route, the executable's and the folder's name).
    pub(crate) id: String,
    /// The human name, from the id.
    pub(crate) name: String,
    /// The manifest's `min_host`.
    pub(crate) min_host: String,
    /// The target triples to build for, this machine's first (Rust).
    pub(crate) triples: Vec<String>,
    /// The Rust SDK's folder, as written into `Cargo.toml` (Rust).
    pub(crate) sdk: Option<String>,
}

/// One file to write: its path in the plugin's folder, its text, whether it is executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    /// Relative path.
    pub(crate) path: String,
    /// Contents.
    pub(crate) text: String,
    /// Mode `0755` rather than `0644`.
    pub(crate) executable: bool,
}

fn file(path: impl Into<String>, text: String) -> File {
    File {
        path: path.into(),
        text,
        executable: false,
    }
}

/// The files of a Rust plugin.
pub(crate) fn rust(v: &Values) -> Vec<File> {
    let entries: Vec<String> = v
        .triples
        .iter()
        .map(|t| format!("{t} = \"bin/{t}/{}\"", v.id))
        .collect();
    let sdk = toml_string(v.sdk.as_deref().unwrap_or_default());
    let extra = [
        ("ENTRIES", entries.join("\n")),
        ("SDK", sdk),
        ("PACK_STEPS", pack_steps(v)),
    ];
    let r = |t: &str| render(t, v, &extra);
    vec![
        file("manifest.toml", r(RUST_MANIFEST)),
        file("Cargo.toml", r(RUST_CARGO)),
        file("src/main.rs", r(RUST_MAIN)),
        file(".cargo/config.toml", RUST_CARGO_CONFIG.to_string()),
        file("bundle.js", r(BUNDLE_JS)),
        file("README.md", r(RUST_README)),
        file(".gitignore", RUST_GITIGNORE.to_string()),
    ]
}

/// The files of a Python plugin.
pub(crate) fn python(v: &Values) -> Vec<File> {
    let r = |t: &str| render(t, v, &[]);
    vec![
        file("manifest.toml", r(PYTHON_MANIFEST)),
        File {
            path: format!("{}.binary", v.id),
            text: r(PYTHON_PLUGIN),
            executable: true,
        },
        file("toru_plugin.py", PYTHON_SDK.to_string()),
        file("bundle.js", r(BUNDLE_JS)),
        file("README.md", r(PYTHON_README)),
        file(".gitignore", PYTHON_GITIGNORE.to_string()),
    ]
}

/// The README's commands that fill `bin/` for each triple and pack: a plain `cargo build` for this
/// machine (its first triple; `target/release`), `--target` for the others.
fn pack_steps(v: &Values) -> String {
    let id = &v.id;
    let mut lines = Vec::new();
    let mut copies = Vec::new();
    for (i, t) in v.triples.iter().enumerate() {
        if i == 0 && t != BOARD_TRIPLE {
            lines.push(format!("cargo build --release       # this machine ({t})"));
            copies.push(format!("cp target/release/{id} bin/{t}/"));
        } else {
            lines.insert(0, format!("rustup target add {t}   # once"));
            lines.push(format!("cargo build --release --target {t}"));
            copies.push(format!("cp target/{t}/release/{id} bin/{t}/"));
        }
    }
    let dirs: Vec<String> = v.triples.iter().map(|t| format!("bin/{t}")).collect();
    lines.push(format!("mkdir -p {}", dirs.join(" ")));
    lines.extend(copies);
    lines.push("toru key generate mykey           # once: mykey.key (secret), mykey.pub".into());
    lines.push("toru plugin pack . --key mykey.key".into());
    lines.join("\n")
}

/// `template` with every `@KEY@` of `v` and `extra` replaced (`@SETTINGS@` by the settings
/// example).
fn render(template: &str, v: &Values, extra: &[(&str, String)]) -> String {
    let mut out = template.replace("@SETTINGS@", SETTINGS.trim_end());
    for (key, value) in [
        ("ID", v.id.as_str()),
        ("NAME", v.name.as_str()),
        ("VERSION", FIRST_VERSION),
        ("AUTHOR", AUTHOR),
        ("ICON", ICON),
        ("MIN_HOST", v.min_host.as_str()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, v.as_str())))
    {
        out = out.replace(&format!("@{key}@"), value);
    }
    out
}

/// `s` as a TOML basic string, quotes included.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn values() -> Values {
        Values {
            id: "my-plugin".into(),
            name: "My plugin".into(),
            min_host: ">=0.1".into(),
            triples: vec!["x86_64-unknown-linux-gnu".into(), BOARD_TRIPLE.into()],
            sdk: Some("/src/toru \"x\"\\/toru-plugin-api".into()),
        }
    }

    /// No `@KEY@` (upper case letters and `_` between two `@`) is left in any file.
    fn no_placeholder_left(files: &[File]) {
        for f in files {
            for (i, _) in f.text.match_indices('@') {
                let key: String = f.text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                let closed = f.text[i + 1 + key.len()..].starts_with('@');
                assert!(key.is_empty() || !closed, "{}: @{key}@ left", f.path);
            }
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        no_placeholder_left(&rust(&values()));
        no_placeholder_left(&python(&values()));
    }

    #[test]
    fn rust_manifest_names_an_entry_per_triple_and_parses() {
        let files = rust(&values());
        let m = &files
            .iter()
            .find(|f| f.path == "manifest.toml")
            .unwrap()
            .text;
        let m = crate::package::manifest::Manifest::parse(m).unwrap();
        assert_eq!(m.id, "my-plugin");
        assert_eq!(m.route, "/my-plugin");
        assert_eq!(
            m.entry.get("aarch64-unknown-linux-musl").unwrap(),
            "bin/aarch64-unknown-linux-musl/my-plugin"
        );
        assert_eq!(m.entry.len(), 2);
        assert!(m.settings.is_some());
        assert_eq!(m.frontend.as_deref(), Some("bundle.js"));
    }

    #[test]
    fn python_manifest_parses_and_carries_the_sdk() {
        let files = python(&values());
        let m = &files
            .iter()
            .find(|f| f.path == "manifest.toml")
            .unwrap()
            .text;
        let m = crate::package::manifest::Manifest::parse(m).unwrap();
        assert_eq!(m.entry.get("any").unwrap(), "my-plugin.binary");
        assert_eq!(m.files, vec!["toru_plugin.py".to_string()]);
        let exe = files.iter().find(|f| f.path == "my-plugin.binary").unwrap();
        assert!(exe.executable && exe.text.starts_with("#!/usr/bin/env python3\n"));
        assert!(
            files
                .iter()
                .any(|f| f.path == "toru_plugin.py" && f.text == PYTHON_SDK)
        );
    }

    #[test]
    fn the_sdk_path_is_a_toml_string() {
        let files = rust(&values());
        let cargo = &files.iter().find(|f| f.path == "Cargo.toml").unwrap().text;
        assert!(
            cargo.contains(r#"toru-plugin-api = { path = "/src/toru \"x\"\\/toru-plugin-api" }"#),
            "{cargo}"
        );
        assert_eq!(toml_string("a\u{7}"), "\"a\\u0007\"");
    }

    #[test]
    fn pack_steps_build_this_machine_plainly_and_the_board_with_its_target() {
        let steps = pack_steps(&values());
        assert!(steps.starts_with("rustup target add aarch64-unknown-linux-musl"));
        assert!(steps.contains("cp target/release/my-plugin bin/x86_64-unknown-linux-gnu/"));
        assert!(steps.contains(
            "cp target/aarch64-unknown-linux-musl/release/my-plugin bin/aarch64-unknown-linux-musl/"
        ));
        // On the board itself: one triple, built with --target.
        let mut v = values();
        v.triples = vec![BOARD_TRIPLE.into()];
        let steps = pack_steps(&v);
        assert!(!steps.contains("cargo build --release  "));
        assert!(steps.contains("cargo build --release --target aarch64-unknown-linux-musl"));
    }
}
