//! `toru key generate NAME`, `toru plugin pack DIR [--key NAME.key] [-o FILE]` and `toru license
//! issue`: the offline commands a plugin author runs (no daemon, no config, no store). Thin: the
//! work is `package::sign`, `package::pack` and `license`; this prints what happened, and errors
//! with their chain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::error_chain::error_chain;
use crate::package::{pack, sign};

/// One author command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackCommand {
    /// Write `NAME.key` and `NAME.pub` into the current directory.
    KeyGenerate {
        /// The key pair's file stem.
        name: String,
    },
    /// Pack a directory holding a `manifest.toml`.
    Pack {
        /// The directory.
        dir: PathBuf,
        /// The secret key to sign with; `None`: unsigned.
        key: Option<PathBuf>,
        /// The package to write; `None`: `ID-VERSION.toru` in the current directory.
        out: Option<PathBuf>,
    },
    /// Sign a licence for one plugin on one device.
    LicenseIssue {
        /// The publisher's secret key (the one that signs the plugin's packages).
        key: PathBuf,
        /// The plugin id.
        plugin: String,
        /// The device's licensing id (`toru instance id` on the device).
        instance: String,
        /// Features it unlocks.
        features: Vec<String>,
        /// Valid from (`YYYY-MM-DD` or RFC 3339; `None`: the start of today, UTC).
        not_before: Option<String>,
        /// Valid until (a date, or `never`; `None`: never).
        expires: Option<String>,
        /// The file to write; `None`: `PLUGIN.license` in the current directory.
        out: Option<PathBuf>,
    },
}

/// Run `cmd`, printing the outcome (errors on stderr, exit code 1).
pub fn run(cmd: PackCommand) -> ExitCode {
    let result = match cmd {
        PackCommand::KeyGenerate { name } => key_generate(&name),
        PackCommand::Pack { dir, key, out } => pack_dir(&dir, key.as_deref(), out.as_deref()),
        PackCommand::LicenseIssue {
            key,
            plugin,
            instance,
            features,
            not_before,
            expires,
            out,
        } => license_issue(
            &key,
            crate::license::Issue {
                plugin,
                instance,
                features,
                not_before: None,
                expires: None,
            },
            not_before.as_deref(),
            expires.as_deref(),
            out,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toru: {e}");
            ExitCode::FAILURE
        }
    }
}

fn key_generate(name: &str) -> Result<(), String> {
    let (sk, pk) = sign::generate(name, Path::new(".")).map_err(|e| error_chain(&e))?;
    let key = sign::public_key_of(&sk).map_err(|e| error_chain(&e))?;
    let (sk, pk) = (shown(&sk), shown(&pk));
    println!("key id {}", key.key_id);
    println!(
        "secret key {} (keep it private; it has no password)",
        sk.display()
    );
    println!(
        "public key {} (give it to devices: toru trust add {})",
        pk.display(),
        pk.display()
    );
    Ok(())
}

fn license_issue(
    key: &Path,
    mut req: crate::license::Issue,
    not_before: Option<&str>,
    expires: Option<&str>,
    out: Option<PathBuf>,
) -> Result<(), String> {
    use crate::license::parse_date;
    req.not_before = not_before
        .map(parse_date)
        .transpose()
        .map_err(|e| format!("--not-before: {e}"))?;
    req.expires = match expires {
        None | Some("never") => None,
        Some(d) => Some(parse_date(d).map_err(|e| format!("--expires: {e} (or never)"))?),
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.license", req.plugin)));
    let (text, claims) =
        crate::license::issue(key, &req, crate::clock::now()).map_err(|e| error_chain(&e))?;
    if std::fs::symlink_metadata(&out).is_ok() {
        return Err(format!(
            "{} exists already; it is not overwritten",
            out.display()
        ));
    }
    std::fs::write(&out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "licence for {} on instance {} → {}",
        claims.plugin,
        claims.instance,
        out.display()
    );
    println!(
        "signed by key {}; valid from {}{}; features: {}",
        claims.publisher,
        claims.not_before.to_rfc3339(),
        claims
            .expires
            .map_or(", never expires".to_string(), |e| format!(
                " until {}",
                e.to_rfc3339()
            )),
        if claims.features.is_empty() {
            "none".to_string()
        } else {
            claims.features.join(", ")
        }
    );
    Ok(())
}

/// A path in the current directory without its `./`.
fn shown(p: &Path) -> &Path {
    p.strip_prefix(".").unwrap_or(p)
}

fn pack_dir(dir: &Path, key: Option<&Path>, out: Option<&Path>) -> Result<(), String> {
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => {
            // The default name needs the manifest; `pack` reads (and checks) it again.
            let text = std::fs::read_to_string(dir.join("manifest.toml"))
                .map_err(|e| format!("cannot read {}: {e}", dir.join("manifest.toml").display()))?;
            let m = crate::package::manifest::Manifest::parse(&text).map_err(|e| e.to_string())?;
            PathBuf::from(format!("{}-{}.toru", m.id, m.version))
        }
    };
    let report = pack::pack(dir, key, &out).map_err(|e| error_chain(&e))?;
    println!(
        "{} {} → {} ({} bytes, {} files)",
        report.manifest.id,
        report.manifest.version,
        report.out.display(),
        report.bytes,
        report.files.len() + 1
    );
    match &report.metadata_checked {
        Some(entry) => println!("--metadata of {entry} agrees with the manifest"),
        None => eprintln!(
            "note: the package has no entry for this machine ({}); --metadata was not checked",
            crate::package::manifest::HOST_TRIPLE
        ),
    }
    match &report.signature {
        Some((sig, key_id)) => println!("signed by key {key_id}: {}", sig.display()),
        None => eprintln!(
            "warning: unsigned (no --key); a device refuses it unless it allows unsigned packages"
        ),
    }
    Ok(())
}
