//! `toru plugin new NAME --lang rust|python [--dir PARENT] [--sdk PATH]`: writes `PARENT/NAME/`, a
//! plugin folder that builds, passes `toru plugin check` and packs with `toru plugin pack` as it is
//! (the guide, `docs/PLUGINS.md`, walks through it; `tests/guide.rs` runs the guide).
//!
//! Offline, like `pack_cmd`: no config, no store, no daemon. This module decides and writes; the
//! files themselves are `templates` (embedded in the binary). It owns the rules for NAME (the
//! host's plugin id rule, plus cargo's for a Rust package), where the Rust SDK is taken from
//! (`--sdk`, else `$TORU_SDK`, else the nearest `toru-plugin-api/Cargo.toml` above PARENT — the SDK
//! is not on crates.io), and which targets a Rust plugin's manifest names: the machine this `toru`
//! was built for and the board (`aarch64-unknown-linux-musl`).

mod templates;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toru_plugin_api::protocol::PluginMetadata;

use crate::error_chain::error_chain;
use crate::package::manifest::HOST_TRIPLE;

/// The language of the plugin to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A cargo project on the Rust SDK (`toru-plugin-api`).
    Rust,
    /// A script on the Python SDK (`toru_plugin.py`, written beside it).
    Python,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" => Ok(Lang::Python),
            other => Err(format!(
                "{other:?} is not a language of `plugin new`: rust or python"
            )),
        }
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// The plugin id, also the folder's name.
    pub name: String,
    /// Its language.
    pub lang: Lang,
    /// The folder to create it in (`--dir`, default the current one).
    pub parent: PathBuf,
    /// The Rust SDK's folder (`--sdk`).
    pub sdk: Option<PathBuf>,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NewError {
    /// NAME breaks the host's plugin id rule.
    #[error("{0} (a plugin's name is its id)")]
    Name(String),
    /// NAME is a plugin id cargo cannot name a package or executable by.
    #[error(
        "{name:?} is a valid plugin id, but cargo cannot build a Rust package of that name: {why}; choose another name (or --lang python)"
    )]
    CargoName {
        /// The name.
        name: String,
        /// Cargo's rule.
        why: &'static str,
    },
    /// The folder exists and holds something.
    #[error("{0} already exists and is not empty: choose another name or --dir, or remove it")]
    Exists(PathBuf),
    /// No SDK was given and none was found.
    #[error(
        "cannot find the Rust SDK (toru-plugin-api), which is not on crates.io: pass --sdk PATH (the toru-plugin-api folder of a checkout of Toru) or set TORU_SDK; there is no toru-plugin-api/Cargo.toml in {0} or any folder above it"
    )]
    NoSdk(PathBuf),
    /// The SDK given is not one.
    #[error(
        "{from} {path}: not the Rust SDK (no Cargo.toml of the package toru-plugin-api there, nor in its toru-plugin-api/ folder)"
    )]
    NotSdk {
        /// `--sdk` or `TORU_SDK`.
        from: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// `--sdk` with `--lang python`.
    #[error(
        "--sdk is for --lang rust; a Python plugin gets the SDK this toru carries (toru_plugin.py)"
    )]
    SdkForPython,
    /// A path that cannot be written into a Cargo.toml.
    #[error("{0}: the path is not UTF-8, so Cargo.toml cannot name it")]
    NotUtf8(PathBuf),
    /// Reading or writing failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NewError {
    let what = what.into();
    move |source| NewError::Io { what, source }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Created {
    /// The plugin's folder.
    pub dir: PathBuf,
    /// The files in it, relative.
    pub files: Vec<String>,
    /// The Rust SDK the Cargo.toml names.
    pub sdk: Option<PathBuf>,
}

/// Run `cmd` (`TORU_SDK` from the environment), printing what was written and what to do next
/// (errors on stderr, exit code 1).
pub fn run(cmd: NewCommand) -> ExitCode {
    let env_sdk = std::env::var_os("TORU_SDK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    match create(&cmd, env_sdk) {
        Ok(c) => {
            let lang = match cmd.lang {
                Lang::Rust => "Rust",
                Lang::Python => "Python",
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{lang} plugin {} in {}:", cmd.name, c.dir.display());
            for f in &c.files {
                let _ = writeln!(out, "  {f}");
            }
            if let Some(sdk) = &c.sdk {
                let _ = writeln!(out, "SDK: {}", sdk.display());
            }
            let _ = writeln!(
                out,
                "next: its README.md says how to build, check, pack and install it"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toru: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Write the plugin `cmd` asks for; `env_sdk` is `$TORU_SDK`. Everything is checked before the
/// first write; a write that fails removes what was written.
pub fn create(cmd: &NewCommand, env_sdk: Option<PathBuf>) -> Result<Created, NewError> {
    check_name(&cmd.name, cmd.lang)?;
    let cwd = std::env::current_dir().map_err(io("cannot read the current folder"))?;
    // Without `.` components, for the messages (`/a/./b` → `/a/b`).
    let parent: PathBuf = cwd.join(&cmd.parent).components().collect();
    let sdk = match cmd.lang {
        Lang::Rust => Some(find_sdk(cmd.sdk.as_deref(), env_sdk.as_deref(), &parent)?),
        Lang::Python if cmd.sdk.is_some() => return Err(NewError::SdkForPython),
        Lang::Python => None,
    };
    let values = templates::Values {
        id: cmd.name.clone(),
        name: human_name(&cmd.name),
        min_host: min_host(),
        triples: triples(),
        sdk: sdk
            .as_deref()
            .map(|p| p.to_str().ok_or_else(|| NewError::NotUtf8(p.to_path_buf())))
            .transpose()?
            .map(str::to_string),
    };
    let files = match cmd.lang {
        Lang::Rust => templates::rust(&values),
        Lang::Python => templates::python(&values),
    };
    let dir = if cmd.parent.as_os_str() == "." {
        PathBuf::from(&cmd.name)
    } else {
        cmd.parent.join(&cmd.name)
    };
    let made_dir = make_empty_dir(&dir)?;
    if let Err(e) = write_files(&dir, &files) {
        remove_written(&dir, &files, made_dir);
        return Err(e);
    }
    Ok(Created {
        dir,
        files: files.into_iter().map(|f| f.path).collect(),
        sdk,
    })
}

/// NAME must be a plugin id the host accepts (the same check as its `--metadata` rule); for Rust
/// also a name cargo builds.
fn check_name(name: &str, lang: Lang) -> Result<(), NewError> {
    let metadata = PluginMetadata {
        id: name.to_string(),
        name: name.to_string(),
        version: templates::FIRST_VERSION.to_string(),
        author: None,
        icon: String::new(),
        route: format!("/{name}"),
        protocol: Some(toru_plugin_api::PROTOCOL_VERSION.to_string()),
    };
    metadata
        .validate()
        .map_err(|e| NewError::Name(e.to_string()))?;
    if lang == Lang::Rust {
        let why = if name.starts_with(|c: char| c.is_ascii_digit()) {
            Some("a package name cannot start with a digit")
        } else if ["build", "deps", "examples", "incremental"].contains(&name) {
            Some("an executable cannot have the name of one of its build folders")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(NewError::CargoName {
                name: name.to_string(),
                why,
            });
        }
    }
    Ok(())
}

/// `hello-world` → `Hello world`.
fn human_name(id: &str) -> String {
    let words: Vec<&str> = id.split('-').filter(|w| !w.is_empty()).collect();
    let text = words.join(" ");
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => id.to_string(),
    }
}

/// This host's minor version and later: a new plugin is written for the SDKs this toru carries.
fn min_host() -> String {
    match semver::Version::parse(crate::VERSION) {
        Ok(v) if v.pre.is_empty() => format!(">={}.{}", v.major, v.minor),
        // A pre-release host matches only a requirement naming a pre-release.
        Ok(v) => format!(">={v}"),
        Err(_) => "*".to_string(),
    }
}

/// The targets of a Rust plugin: this machine's (so it can be checked and tried here) and the
/// board's.
fn triples() -> Vec<String> {
    let mut t = vec![HOST_TRIPLE.to_string()];
    if HOST_TRIPLE != templates::BOARD_TRIPLE {
        t.push(templates::BOARD_TRIPLE.to_string());
    }
    t
}

/// The Rust SDK's folder, absolute: `--sdk`, else `$TORU_SDK` (each may name the SDK's folder or
/// a checkout holding it), else the nearest `toru-plugin-api/` above `parent`.
fn find_sdk(flag: Option<&Path>, env: Option<&Path>, parent: &Path) -> Result<PathBuf, NewError> {
    let given = flag.map(|p| ("--sdk", p)).or(env.map(|p| ("TORU_SDK", p)));
    if let Some((from, path)) = given {
        return [path.to_path_buf(), path.join("toru-plugin-api")]
            .into_iter()
            .find(|p| is_sdk(p))
            .and_then(|p| p.canonicalize().ok())
            .ok_or_else(|| NewError::NotSdk {
                from,
                path: path.to_path_buf(),
            });
    }
    parent
        .ancestors()
        .map(|a| a.join("toru-plugin-api"))
        .find(|p| is_sdk(p))
        .and_then(|p| p.canonicalize().ok())
        .ok_or_else(|| NewError::NoSdk(parent.to_path_buf()))
}

/// `dir` holds the Cargo.toml of the package `toru-plugin-api`.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|text| {
        text.lines()
            .any(|l| l.replace(' ', "") == "name=\"toru-plugin-api\"")
    })
}

/// Create `dir` (and its parents), or accept it if it is an empty folder; whether it was created.
fn make_empty_dir(dir: &Path) -> Result<bool, NewError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(false),
            Some(_) => Err(NewError::Exists(dir.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(NewError::Exists(dir.to_path_buf()))
        }
        Err(source) => Err(NewError::Io {
            what: format!("cannot read {}", dir.display()),
            source,
        }),
    }
}

fn write_files(dir: &Path, files: &[templates::File]) -> Result<(), NewError> {
    use std::os::unix::fs::OpenOptionsExt;
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if f.executable { 0o755 } else { 0o644 })
            .open(&path)
            .map_err(io(format!("cannot create {}", path.display())))?;
        out.write_all(f.text.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
    }
    Ok(())
}

/// After a failed write: remove the files (and the folder, if this command made it).
fn remove_written(dir: &Path, files: &[templates::File], made_dir: bool) {
    if made_dir {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    for f in files {
        let _ = std::fs::remove_file(dir.join(&f.path));
    }
    for sub in ["src", ".cargo"] {
        let _ = std::fs::remove_dir(dir.join(sub));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("toru-new-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cmd(name: &str, lang: Lang, parent: &Path) -> NewCommand {
        NewCommand {
            name: name.into(),
            lang,
            parent: parent.to_path_buf(),
            sdk: None,
        }
    }

    /// A fake checkout: `root/toru-plugin-api/Cargo.toml`.
    fn checkout(root: &Path) -> PathBuf {
        let sdk = root.join("toru-plugin-api");
        std::fs::create_dir_all(&sdk).unwrap();
        std::fs::write(
            sdk.join("Cargo.toml"),
            "[package]\nname = \"toru-plugin-api\"\n",
        )
        .unwrap();
        sdk.canonicalize().unwrap()
    }

    #[test]
    fn names_follow_the_host_id_rule() {
        for bad in ["", "Hello", "-x", "a_b", "a.b", "x/y", &"a".repeat(64)] {
            let e = check_name(bad, Lang::Python).unwrap_err();
            assert!(e.to_string().contains("invalid id"), "{bad}: {e}");
        }
        for good in ["a", "hello-world", "9lives", &"a".repeat(63)] {
            check_name(good, Lang::Python).unwrap();
        }
    }

    #[test]
    fn rust_names_follow_cargo_too() {
        assert!(matches!(
            check_name("9lives", Lang::Rust),
            Err(NewError::CargoName { .. })
        ));
        assert!(matches!(
            check_name("build", Lang::Rust),
            Err(NewError::CargoName { .. })
        ));
        check_name("builder", Lang::Rust).unwrap();
    }

    #[test]
    fn human_names() {
        assert_eq!(human_name("hello-world"), "Hello world");
        assert_eq!(human_name("a--b-"), "A b");
        assert_eq!(human_name("42"), "42");
    }

    #[test]
    fn the_sdk_is_found_above_the_parent_or_given() {
        let root = temp("sdk");
        let sdk = checkout(&root);
        let deep = root.join("plugins/mine");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_sdk(None, None, &deep).unwrap(), sdk);
        // Given: the SDK folder or the checkout; the flag before the environment.
        assert_eq!(find_sdk(Some(&root), None, Path::new("/")).unwrap(), sdk);
        assert_eq!(find_sdk(None, Some(&sdk), Path::new("/")).unwrap(), sdk);
        let e = find_sdk(Some(&deep), Some(&sdk), Path::new("/")).unwrap_err();
        assert!(e.to_string().starts_with("--sdk "), "{e}");
        let e = find_sdk(None, None, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("pass --sdk"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn writes_a_rust_plugin_and_refuses_a_folder_in_use() {
        let root = temp("rust");
        let sdk = checkout(&root);
        let c = create(&cmd("hello", Lang::Rust, &root), None).unwrap();
        assert_eq!(c.sdk.as_deref(), Some(sdk.as_path()));
        let cargo = std::fs::read_to_string(root.join("hello/Cargo.toml")).unwrap();
        assert!(
            cargo.contains(&format!("path = \"{}\"", sdk.display())),
            "{cargo}"
        );
        for f in [
            "src/main.rs",
            ".cargo/config.toml",
            "manifest.toml",
            "bundle.js",
        ] {
            assert!(root.join("hello").join(f).is_file(), "{f}");
        }
        let e = create(&cmd("hello", Lang::Rust, &root), None).unwrap_err();
        assert!(matches!(e, NewError::Exists(_)), "{e}");
        // An empty folder is used.
        std::fs::create_dir(root.join("empty")).unwrap();
        create(&cmd("empty", Lang::Python, &root), None).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn python_needs_no_sdk_and_refuses_one() {
        let root = temp("py");
        create(&cmd("snake", Lang::Python, &root), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("snake/snake.binary"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let mut c = cmd("snake2", Lang::Python, &root);
        c.sdk = Some(root.clone());
        assert!(matches!(create(&c, None), Err(NewError::SdkForPython)));
        assert!(!root.join("snake2").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_refused_rust_plugin_writes_nothing() {
        let root = temp("nosdk");
        let e = create(&cmd("lonely", Lang::Rust, &root), None).unwrap_err();
        assert!(matches!(e, NewError::NoSdk(_)), "{e}");
        assert!(!root.join("lonely").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
