//! Package signatures in minisign's format: public keys ([`PublicKey::parse`]), verification of a
//! `.minisig` against the trusted keys ([`verify`]), and for authors key generation ([`generate`])
//! and signing ([`sign_file`]). The cryptography is the `minisign` crate's; this module keeps its
//! inputs well-formed and tells the failures apart.
//!
//! ```text
//! NAME.pub      untrusted comment: minisign public key: KEYID
//!               base64( "Ed" ‖ keynum[8] ‖ ed25519 public key[32] )
//! NAME.minisig  untrusted comment: <anything>
//!               base64( "ED" ‖ keynum[8] ‖ ed25519(blake2b-512(file))[64] )
//!               trusted comment: <text, signed too>
//!               base64( ed25519(signature[64] ‖ trusted comment)[64] )
//! ```
//!
//! The key id is the keynum read as a little-endian u64, printed as 16 uppercase hex digits
//! (as `minisign` prints it). Only prehashed signatures (`ED`, what `minisign -S` writes since
//! 0.8) are accepted: a legacy one (`Ed`, `minisign -S -l`) signs the raw file, which would have to
//! be read into memory whole — refused with [`SignError::Legacy`]. Verification streams the file.
//!
//! Signature text from outside (an upload header) is checked for shape before the crate sees it:
//! `minisign` 0.10 panics on a global signature shorter than 64 bytes.

// Until the package service (issue 11, the lead's part) calls verification, some of this is used only by
// tests and fuzzing; the expectation turns into a warning once nothing is dead any more.
#![cfg_attr(
    not(test),
    expect(dead_code, reason = "the package service integrates these")
)]

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Bytes of a decoded public key: algorithm (2), keynum (8), Ed25519 key (32).
const PUBLIC_KEY_BYTES: usize = 42;
/// Bytes of a decoded signature line: algorithm (2), keynum (8), Ed25519 signature (64).
const SIGNATURE_LINE_BYTES: usize = 74;
/// Bytes of the decoded global (trusted comment) signature.
const GLOBAL_SIGNATURE_BYTES: usize = 64;
/// Longest signature file accepted, in bytes (a trusted comment is one line).
pub(crate) const MAX_SIGNATURE_BYTES: usize = 8 * 1024;
const UNTRUSTED_PREFIX: &str = "untrusted comment:";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// Why a key or a signature was refused, or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SignError {
    /// The signature text is not a minisign signature.
    #[error("the signature is not a minisign signature: {0}")]
    Malformed(String),
    /// Signed by a key the device does not trust.
    #[error("signed by key {key_id}, which this device does not trust")]
    UntrustedKey {
        /// The signing key's id.
        key_id: String,
    },
    /// The signature does not match the file (or its trusted comment was altered).
    #[error("the signature by key {key_id} does not match the package (altered or corrupt)")]
    Mismatch {
        /// The signing key's id.
        key_id: String,
    },
    /// A legacy (not prehashed) signature.
    #[error(
        "the signature by key {key_id} is a legacy minisign signature (-l); sign without -l (prehashed)"
    )]
    Legacy {
        /// The signing key's id.
        key_id: String,
    },
    /// The public key text is not a minisign public key.
    #[error("not a minisign public key: {0}")]
    BadPublicKey(String),
    /// The secret key file cannot be used.
    #[error("cannot use the secret key {path}: {why}")]
    BadSecretKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A key name that is not a plain file name.
    #[error("invalid key name {0:?}: use a plain file name (no '/')")]
    BadName(String),
    /// A key file already exists.
    #[error("{} exists already; it is not overwritten", .0.display())]
    Exists(PathBuf),
    /// The crate failed (random numbers, …).
    #[error("{0}")]
    Crypto(String),
    /// A file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A trusted publisher's key.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    /// 16 uppercase hex digits, as minisign prints it.
    pub(crate) key_id: String,
    /// The base64 line of the `.pub` file.
    pub(crate) base64: String,
    key: minisign::PublicKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.base64 == other.base64
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Parse a public key: the whole `.pub` file (its `untrusted comment:` line, then the base64
    /// line) or the base64 line alone. Blank lines and surrounding spaces are ignored.
    pub(crate) fn parse(text: &str) -> Result<PublicKey, SignError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut line = lines
            .next()
            .ok_or_else(|| SignError::BadPublicKey("the text is empty".into()))?;
        if line.starts_with(UNTRUSTED_PREFIX) {
            line = lines.next().ok_or_else(|| {
                SignError::BadPublicKey("a comment line but no key line after it".into())
            })?;
        }
        if lines.next().is_some() {
            return Err(SignError::BadPublicKey(
                "more than one key line (give one key: the .pub file or its second line)".into(),
            ));
        }
        let bytes = STANDARD
            .decode(line)
            .map_err(|e| SignError::BadPublicKey(format!("the key line is not base64: {e}")))?;
        if bytes.len() != PUBLIC_KEY_BYTES || bytes.get(..2) != Some(b"Ed".as_slice()) {
            return Err(SignError::BadPublicKey(format!(
                "the key line decodes to {} bytes, not an Ed25519 minisign key ({PUBLIC_KEY_BYTES} bytes starting with \"Ed\")",
                bytes.len()
            )));
        }
        let key = minisign::PublicKey::from_bytes(&bytes)
            .map_err(|e| SignError::BadPublicKey(e.to_string()))?;
        Ok(PublicKey {
            key_id: key_id(&bytes[2..10]),
            base64: line.to_string(),
            key,
        })
    }

    /// The `.pub` file's text for this key.
    pub(crate) fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: minisign public key: {}\n{}\n",
            self.key_id, self.base64
        )
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The key that signed.
    pub(crate) key_id: String,
    /// The signed trusted comment.
    pub(crate) trusted_comment: String,
}

/// A keynum as minisign prints it.
fn key_id(keynum: &[u8]) -> String {
    let mut le = [0u8; 8];
    le.copy_from_slice(&keynum[..8.min(keynum.len())]);
    format!("{:016X}", u64::from_le_bytes(le))
}

/// The parts of a signature text, checked for shape.
struct SigParts {
    key_id: String,
    prehashed: bool,
    keynum: [u8; 8],
}

fn parse_signature(sig_text: &str) -> Result<SigParts, SignError> {
    let bad = |why: &str| SignError::Malformed(why.to_string());
    if sig_text.len() > MAX_SIGNATURE_BYTES {
        return Err(bad("longer than 8 KiB"));
    }
    let mut lines = sig_text.lines();
    let mut next = |what: &str| {
        lines
            .next()
            .ok_or_else(|| bad(&format!("it ends before the {what} line")))
    };
    if !next("untrusted comment")?.starts_with(UNTRUSTED_PREFIX) {
        return Err(bad("the first line is not `untrusted comment: …`"));
    }
    let sig = STANDARD
        .decode(next("signature")?.trim())
        .map_err(|e| bad(&format!("the signature line is not base64: {e}")))?;
    if sig.len() != SIGNATURE_LINE_BYTES {
        return Err(bad(&format!(
            "the signature line decodes to {} bytes, not {SIGNATURE_LINE_BYTES}",
            sig.len()
        )));
    }
    let prehashed = match &sig[..2] {
        b"ED" => true,
        b"Ed" => false,
        _ => return Err(bad("the signature algorithm is not Ed25519")),
    };
    if !next("trusted comment")?.starts_with(TRUSTED_PREFIX) {
        return Err(bad("the third line is not `trusted comment: …`"));
    }
    let global = STANDARD
        .decode(next("comment signature")?.trim())
        .map_err(|e| bad(&format!("the comment signature line is not base64: {e}")))?;
    if global.len() != GLOBAL_SIGNATURE_BYTES {
        return Err(bad(&format!(
            "the comment signature decodes to {} bytes, not {GLOBAL_SIGNATURE_BYTES}",
            global.len()
        )));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("text after the fourth line"));
    }
    let mut keynum = [0u8; 8];
    keynum.copy_from_slice(&sig[2..10]);
    Ok(SigParts {
        key_id: key_id(&keynum),
        prehashed,
        keynum,
    })
}

/// The id of the key that made a signature (whether or not it is trusted).
pub(crate) fn signature_key_id(sig_text: &str) -> Result<String, SignError> {
    parse_signature(sig_text).map(|p| p.key_id)
}

/// Verify the signature `sig_text` (a `.minisig` file's text) over the file `package` (streamed)
/// against the `trusted` keys. Errors say which case: not a signature, an untrusted key, a legacy
/// signature, or a signature that does not match.
pub(crate) fn verify(
    package: &Path,
    sig_text: &str,
    trusted: &[PublicKey],
) -> Result<Verified, SignError> {
    let parts = parse_signature(sig_text)?;
    let Some(pk) = trusted.iter().find(|k| k.key.keynum() == parts.keynum) else {
        return Err(SignError::UntrustedKey {
            key_id: parts.key_id,
        });
    };
    if !parts.prehashed {
        return Err(SignError::Legacy {
            key_id: parts.key_id,
        });
    }
    let file = File::open(package).map_err(|source| SignError::Io {
        what: format!("cannot read {}", package.display()),
        source,
    })?;
    verify_reader(
        pk,
        parts,
        sig_text,
        BufReader::new(file),
        &package.display().to_string(),
    )
}

/// Verify the signature `sig_text` over `data` (in memory: a licence's claims) against the
/// `trusted` keys; as [`verify`] does for a file.
pub(crate) fn verify_bytes(
    data: &[u8],
    sig_text: &str,
    trusted: &[PublicKey],
) -> Result<Verified, SignError> {
    let parts = parse_signature(sig_text)?;
    let Some(pk) = trusted.iter().find(|k| k.key.keynum() == parts.keynum) else {
        return Err(SignError::UntrustedKey {
            key_id: parts.key_id,
        });
    };
    if !parts.prehashed {
        return Err(SignError::Legacy {
            key_id: parts.key_id,
        });
    }
    verify_reader(pk, parts, sig_text, std::io::Cursor::new(data), "the data")
}

/// The check shared by [`verify`] and [`verify_bytes`], once the key is found.
fn verify_reader(
    pk: &PublicKey,
    parts: SigParts,
    sig_text: &str,
    data: impl std::io::Read + std::io::Seek,
    what: &str,
) -> Result<Verified, SignError> {
    let sig_box = minisign::SignatureBox::from_string(sig_text)
        .map_err(|e| SignError::Malformed(e.to_string()))?;
    minisign::verify(&pk.key, &sig_box, data, true, false, false).map_err(|e| match e.kind() {
        minisign::ErrorKind::Io => SignError::Io {
            what: format!("cannot read {what}"),
            source: std::io::Error::other(e.to_string()),
        },
        _ => SignError::Mismatch {
            key_id: parts.key_id.clone(),
        },
    })?;
    let trusted_comment = sig_box
        .trusted_comment()
        .map_err(|e| SignError::Malformed(e.to_string()))?;
    Ok(Verified {
        key_id: parts.key_id,
        trusted_comment,
    })
}

/// Sign `data` (in memory) with the unencrypted secret key in `secret_key`, as `minisign -S`
/// does (prehashed); returns the `.minisig` text and the signing key.
pub(crate) fn sign_bytes(
    data: &[u8],
    secret_key: &Path,
    trusted_comment: &str,
) -> Result<(String, PublicKey), SignError> {
    let sk = load_secret_key(secret_key)?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| SignError::BadSecretKey {
        path: secret_key.to_path_buf(),
        why: e.to_string(),
    })?;
    let trusted_comment = trusted_comment.replace(['\n', '\r'], " ");
    let sig = minisign::sign(
        Some(&pk),
        &sk,
        std::io::Cursor::new(data),
        Some(&trusted_comment),
        Some("signature from a toru key"),
    )
    .map_err(|e| SignError::Crypto(e.to_string()))?;
    let public = PublicKey::parse(&pk.to_base64())?;
    Ok((sig.into_string(), public))
}

/// A new key pair held in memory (the instance key): the minisign secret key box's text
/// (unencrypted) and the public key.
pub(crate) fn generate_in_memory() -> Result<(String, PublicKey), SignError> {
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| SignError::Crypto(e.to_string()))?;
    let sk_text = pair
        .sk
        .to_box(Some("toru instance key"))
        .map_err(|e| SignError::Crypto(e.to_string()))?
        .into_string();
    Ok((sk_text, PublicKey::parse(&pair.pk.to_base64())?))
}

/// The public key of a secret key box's text (as [`generate_in_memory`] made it).
pub(crate) fn public_key_of_text(sk_text: &str) -> Result<PublicKey, SignError> {
    let sk = minisign::SecretKeyBox::from_string(sk_text)
        .and_then(minisign::SecretKeyBox::into_unencrypted_secret_key)
        .map_err(|e| SignError::Crypto(e.to_string()))?;
    let pk =
        minisign::PublicKey::from_secret_key(&sk).map_err(|e| SignError::Crypto(e.to_string()))?;
    PublicKey::parse(&pk.to_base64())
}

impl PublicKey {
    /// The 32 bytes of the Ed25519 public key (without minisign's algorithm and key number).
    pub(crate) fn ed25519_bytes(&self) -> Vec<u8> {
        let bytes = self.key.to_bytes();
        bytes.get(10..).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// Create a new key pair in `dir`: `NAME.key` (unencrypted minisign secret key, mode `0600`) and
/// `NAME.pub`. Refuses to overwrite either. Returns (secret key path, public key path).
pub(crate) fn generate(name: &str, dir: &Path) -> Result<(PathBuf, PathBuf), SignError> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(SignError::BadName(name.to_string()));
    }
    let sk_path = dir.join(format!("{name}.key"));
    let pk_path = dir.join(format!("{name}.pub"));
    for p in [&sk_path, &pk_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(SignError::Exists(p.clone()));
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| SignError::Crypto(e.to_string()))?;
    let sk_text = pair
        .sk
        .to_box(Some(
            "minisign secret key (unencrypted, from toru key generate)",
        ))
        .map_err(|e| SignError::Crypto(e.to_string()))?
        .into_string();
    let pk_text = pair
        .pk
        .to_box()
        .map_err(|e| SignError::Crypto(e.to_string()))?
        .into_string();
    write_new(&sk_path, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pk_path, pk_text.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&sk_path);
        return Err(e);
    }
    Ok((sk_path, pk_path))
}

/// Write a new file (never over an existing one) with `mode`, synced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    let err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            SignError::Exists(path.to_path_buf())
        } else {
            SignError::Io {
                what: format!("cannot write {}", path.display()),
                source,
            }
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The public key of the unencrypted secret key in `secret_key` (a `.key` file).
pub(crate) fn public_key_of(secret_key: &Path) -> Result<PublicKey, SignError> {
    let sk = load_secret_key(secret_key)?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| SignError::BadSecretKey {
        path: secret_key.to_path_buf(),
        why: e.to_string(),
    })?;
    PublicKey::parse(&pk.to_base64())
}

fn load_secret_key(path: &Path) -> Result<minisign::SecretKey, SignError> {
    let bad = |why: String| SignError::BadSecretKey {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|source| SignError::Io {
        what: format!("cannot read the secret key {}", path.display()),
        source,
    })?;
    let encoded = text
        .lines()
        .nth(1)
        .ok_or_else(|| bad("not a minisign secret key file (two lines)".into()))?;
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|e| bad(format!("the key line is not base64: {e}")))?;
    match bytes.get(2..4) {
        Some([0, 0]) => {}
        Some(b"Sc") => {
            return Err(bad(
                "it is encrypted with a password; use a key from `toru key generate` \
                 (or `minisign -G -W`), or sign with `minisign -Sm FILE`"
                    .into(),
            ));
        }
        _ => return Err(bad("not a minisign secret key".into())),
    }
    minisign::SecretKeyBox::from_string(&text)
        .and_then(minisign::SecretKeyBox::into_unencrypted_secret_key)
        .map_err(|e| bad(e.to_string()))
}

/// Where the signature of `file` is: `FILE.minisig` beside it.
pub(crate) fn signature_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".minisig");
    PathBuf::from(p)
}

/// Sign `file` with the unencrypted secret key in `secret_key`, as `minisign -S` does (prehashed),
/// with `trusted_comment` (one line: line breaks become spaces); write `FILE.minisig` (replacing one that exists, atomically). Returns its
/// path.
pub(crate) fn sign_file(
    file: &Path,
    secret_key: &Path,
    trusted_comment: &str,
) -> Result<PathBuf, SignError> {
    let sk = load_secret_key(secret_key)?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| SignError::BadSecretKey {
        path: secret_key.to_path_buf(),
        why: e.to_string(),
    })?;
    // The trusted comment is one line of the signature file.
    let trusted_comment = trusted_comment.replace(['\n', '\r'], " ");
    let data = File::open(file).map_err(|source| SignError::Io {
        what: format!("cannot read {}", file.display()),
        source,
    })?;
    let sig = minisign::sign(
        Some(&pk),
        &sk,
        BufReader::new(data),
        Some(&trusted_comment),
        Some("signature from a toru key"),
    )
    .map_err(|e| SignError::Crypto(e.to_string()))?;
    let out = signature_path(file);
    super::atomic::write_atomically(&out, |w| w.write_all(sig.into_string().as_bytes())).map_err(
        |source| SignError::Io {
            what: format!("cannot write {}", out.display()),
            source,
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use toru_test_kit::TempDir;

    use super::*;

    /// A key pair `NAME.key`/`NAME.pub` in `t`, and its public key.
    fn key(t: &TempDir, name: &str) -> (PathBuf, PublicKey) {
        let (sk, pk) = generate(name, &t.0).unwrap();
        let key = PublicKey::parse(&std::fs::read_to_string(pk).unwrap()).unwrap();
        (sk, key)
    }

    /// A file with `bytes` and its signature by `sk`.
    fn signed(t: &TempDir, sk: &Path, bytes: &[u8]) -> (PathBuf, String) {
        let file = t.join("p.toru");
        std::fs::write(&file, bytes).unwrap();
        let sig = sign_file(&file, sk, "timestamp:1\tfile:p.toru").unwrap();
        assert_eq!(sig, t.join("p.toru.minisig"));
        (file, std::fs::read_to_string(sig).unwrap())
    }

    #[test]
    fn generated_keys_parse_from_the_file_or_the_line_and_are_not_overwritten() {
        let t = TempDir::new("sign").unwrap();
        let (sk, pk) = generate("alice", &t.0).unwrap();
        assert_eq!(
            std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&pk).unwrap();
        let from_file = PublicKey::parse(&text).unwrap();
        let line = text.lines().nth(1).unwrap();
        let from_line = PublicKey::parse(&format!("  {line}  \n")).unwrap();
        assert_eq!(from_file, from_line);
        assert_eq!(from_file.key_id.len(), 16);
        assert!(
            from_file
                .key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        // The id is the one minisign writes in the comment, and the text round-trips.
        assert!(
            text.lines().next().unwrap().ends_with(&from_file.key_id),
            "{text}"
        );
        assert_eq!(
            PublicKey::parse(&from_file.to_file_text()).unwrap(),
            from_file
        );
        assert_eq!(public_key_of(&sk).unwrap(), from_file);
        assert!(matches!(generate("alice", &t.0), Err(SignError::Exists(p)) if p == sk));
        assert!(matches!(generate("a/b", &t.0), Err(SignError::BadName(_))));
    }

    #[test]
    fn bad_public_keys_say_why() {
        for (text, want) in [
            ("", "empty"),
            ("untrusted comment: x\n", "no key line"),
            ("not base64 !!!", "not base64"),
            ("RWQ=", "decodes to 2 bytes"),
            ("a\nb\n", "more than one key line"),
        ] {
            let e = PublicKey::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_comment() {
        let t = TempDir::new("sign").unwrap();
        let (sk, pk) = key(&t, "k");
        let (_, other) = key(&t, "other");
        let (file, sig) = signed(&t, &sk, b"package bytes");
        assert_eq!(signature_key_id(&sig).unwrap(), pk.key_id);
        let v = verify(&file, &sig, &[other.clone(), pk.clone()]).unwrap();
        assert_eq!(
            v,
            Verified {
                key_id: pk.key_id.clone(),
                trusted_comment: "timestamp:1\tfile:p.toru".into()
            }
        );
    }

    #[test]
    fn a_signature_by_another_key_is_untrusted() {
        let t = TempDir::new("sign").unwrap();
        let (_, trusted) = key(&t, "trusted");
        let (stranger_sk, stranger) = key(&t, "stranger");
        let (file, sig) = signed(&t, &stranger_sk, b"package bytes");
        let e = verify(&file, &sig, std::slice::from_ref(&trusted)).unwrap_err();
        assert!(
            matches!(&e, SignError::UntrustedKey { key_id } if *key_id == stranger.key_id),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "signed by key {}, which this device does not trust",
                stranger.key_id
            )
        );
        assert!(matches!(
            verify(&file, &sig, &[]),
            Err(SignError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn a_tampered_file_or_comment_does_not_match() {
        let t = TempDir::new("sign").unwrap();
        let (sk, pk) = key(&t, "k");
        let (file, sig) = signed(&t, &sk, b"package bytes");
        std::fs::write(&file, b"package byteS").unwrap();
        let e = verify(&file, &sig, std::slice::from_ref(&pk)).unwrap_err();
        assert!(
            matches!(&e, SignError::Mismatch { key_id } if *key_id == pk.key_id),
            "{e:?}"
        );
        std::fs::write(&file, b"package bytes").unwrap();
        assert!(verify(&file, &sig, std::slice::from_ref(&pk)).is_ok());
        let forged = sig.replace("timestamp:1", "timestamp:2");
        let e = verify(&file, &forged, std::slice::from_ref(&pk)).unwrap_err();
        assert!(matches!(e, SignError::Mismatch { .. }), "{e:?}");
    }

    #[test]
    fn garbage_and_misshapen_signatures_are_malformed_not_a_panic() {
        let t = TempDir::new("sign").unwrap();
        let (sk, pk) = key(&t, "k");
        let (file, sig) = signed(&t, &sk, b"package bytes");
        let lines: Vec<&str> = sig.lines().collect();
        let short_global = format!("{}\n{}\n{}\nAAAA\n", lines[0], lines[1], lines[2]);
        let short_sig = format!("{}\nAAAA\n{}\n{}\n", lines[0], lines[2], lines[3]);
        let cases = [
            "".to_string(),
            "garbage".to_string(),
            "untrusted comment: x\n".to_string(),
            short_global,
            short_sig,
            format!("{sig}extra line\n"),
            sig.replace("trusted comment:", "trusted remark:"),
            "x".repeat(10_000),
        ];
        for text in cases {
            let e = verify(&file, &text, std::slice::from_ref(&pk)).unwrap_err();
            assert!(matches!(e, SignError::Malformed(_)), "{text:?}: {e:?}");
            assert!(signature_key_id(&text).is_err());
        }
    }

    #[test]
    fn a_legacy_signature_is_refused_by_name() {
        let t = TempDir::new("sign").unwrap();
        let (sk, pk) = key(&t, "k");
        let (file, sig) = signed(&t, &sk, b"package bytes");
        let lines: Vec<&str> = sig.lines().collect();
        let mut raw = STANDARD.decode(lines[1]).unwrap();
        raw[..2].copy_from_slice(b"Ed");
        let legacy = format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            STANDARD.encode(&raw),
            lines[2],
            lines[3]
        );
        let e = verify(&file, &legacy, std::slice::from_ref(&pk)).unwrap_err();
        assert!(matches!(e, SignError::Legacy { .. }), "{e:?}");
    }

    #[test]
    fn an_encrypted_or_broken_secret_key_is_refused_with_advice() {
        let t = TempDir::new("sign").unwrap();
        let (sk, _) = key(&t, "k");
        let text = std::fs::read_to_string(&sk).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut raw = STANDARD.decode(lines[1]).unwrap();
        raw[2..4].copy_from_slice(b"Sc");
        let enc = t.join("enc.key");
        std::fs::write(&enc, format!("{}\n{}\n", lines[0], STANDARD.encode(&raw))).unwrap();
        let file = t.join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = sign_file(&file, &enc, "c").unwrap_err().to_string();
        assert!(e.contains("encrypted with a password"), "{e}");
        std::fs::write(&enc, "untrusted comment: x\nAAAA\n").unwrap();
        let e = sign_file(&file, &enc, "c").unwrap_err().to_string();
        assert!(e.contains("not a minisign secret key"), "{e}");
    }
}
