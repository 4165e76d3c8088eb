//! `toru key generate NAME` and `toru plugin pack DIR [--key NAME.key] [-o FILE]`: the offline
//! commands a plugin author runs (no daemon, no config, no store). Thin: the work is
//! `package::sign` and `package::pack`; this prints what happened, and errors with their chain.

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
}

/// Run `cmd`, printing the outcome (errors on stderr, exit code 1).
pub fn run(cmd: PackCommand) -> ExitCode {
    let result = match cmd {
        PackCommand::KeyGenerate { name } => key_generate(&name),
        PackCommand::Pack { dir, key, out } => pack_dir(&dir, key.as_deref(), out.as_deref()),
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
