//! `toru`: arguments → config → runtime → `toru::run`. It owns what belongs to the process: the
//! signals (SIGTERM/SIGINT stop the host, SIGHUP asks for a rescan), the HTTP listener it binds, the
//! logger, and the exit code. Administrative subcommands go to `toru::admin`.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use toru::RunError;
use toru::admin::{self, Request};
use toru::config::{Config, Overrides};
use toru::error_chain::error_chain;
use toru::pack_cmd::PackCommand;
use toru::role::Role;

const USAGE: &str = "\
usage: toru [OPTIONS]                  run the host
       toru token create NAME [--role admin|viewer]
       toru token list
       toru token revoke NAME
       toru passwd [--user NAME] [--role admin|viewer]   (password from stdin or a prompt)
       toru plugins | toru enable|disable|restart ID | toru rescan
       toru plugins unbind ID             (give ID to the file that claims it at the next scan)
       toru events [PLUGIN] [--limit N]
       toru store status|repair|reset     (with toru stopped: a store the host cannot use)
       toru key generate NAME             (writes NAME.key and NAME.pub here: a package signing key)
       toru plugin install|update FILE [--sig FILE.minisig] [--allow-downgrade]
                                          (FILE.minisig beside FILE is used when present)
       toru plugin remove ID [--purge-data] | toru plugin versions ID | toru plugin rollback ID
       toru plugin security ID            (its user, folders, limits and what protects it)
       toru plugin limit ID KEY=VALUE...  (open_files, processes, address_space, memory, cpu;
                                          VALUE `default` clears; restarts the plugin)
       toru plugin grant|revoke ID group:NAME|syscall:NAME   (a permission its manifest asks)
       toru trust add NAME.pub [--comment TEXT] | toru trust list | toru trust remove KEYID
       toru system safe-mode [--leave]    (safe mode: the unclean exits in a row, the likely
                                          culprits, the held plugins; --leave starts them)
       toru instance id                   (the instance UUID and its licensing id)
       toru license install FILE [--plugin ID] | toru license list | toru license remove ID
       toru license issue --key NAME.key --plugin ID --instance LICENSING_ID [--feature F]...
                          [--not-before DATE] [--expires DATE|never] [-o FILE]
                                          (signs a licence for one device; FILE defaults to
                                          ID.license; DATE: YYYY-MM-DD or RFC 3339)
       toru system update FILE [--yes] [--reboot]   (a RAUC bundle: checked, installed into the
                                          other slot; the new system is kept once healthy)
       toru system update --status | toru system reboot
       toru plugin pack DIR [--key NAME.key] [-o FILE]   (DIR holds manifest.toml; FILE defaults
                                          to ID-VERSION.toru; without --key it is unsigned)
       toru plugin check FILE [--json] [--config FILE]   (runs a plugin executable or package
                                          through the host's steps, unconfined; exit 0 if all pass)
       toru plugin new NAME --lang rust|python [--dir PARENT] [--sdk PATH]
                                          (writes PARENT/NAME/, a plugin to build, check and pack:
                                          docs/PLUGINS.md; --sdk: the toru-plugin-api folder)
       toru --version | --help

options (also TORU_* environment variables and the config file; flags win):
  --config FILE        TOML config file (TORU_CONFIG)
  --listen ADDR        HTTP address, default 0.0.0.0:8080 (TORU_LISTEN)
  --data-dir DIR       store and state, default /var/lib/toru (TORU_DATA_DIR)
  --plugins-dir DIR    plugin executables (*.binary) (TORU_PLUGINS_DIR)
  --runtime-dir DIR    sockets, default $RUNTIME_DIRECTORY or /run/toru (TORU_RUNTIME_DIR)
  --log-level LEVEL    error, warn, info, debug, trace (TORU_LOG_LEVEL)
  --json               administrative commands print JSON
  --key FILE, -o FILE  plugin pack: the secret key to sign with, the package to write";

enum Cmd {
    Serve,
    Version,
    Help,
    Admin(Request, bool),
    Passwd {
        user: String,
        role: Role,
    },
    Store(toru::store_cmd::StoreCommand, bool),
    Pack(toru::pack_cmd::PackCommand),
    Check {
        file: PathBuf,
        json: bool,
    },
    New(toru::plugin_new::NewCommand),
    SystemUpdate(toru::update_cmd::UpdateCommand, bool),
    Install {
        file: PathBuf,
        sig: Option<PathBuf>,
        expect: &'static str,
        allow_downgrade: bool,
        json: bool,
    },
}

fn parse(args: Vec<String>) -> Result<(Cmd, Overrides), String> {
    let mut o = Overrides::default();
    let mut words = Vec::new();
    let mut role = None;
    let mut user = None;
    let mut limit = None;
    let mut json_out = false;
    // Plugin packages: `plugin pack` flags.
    let mut key = None;
    let mut out = None;
    // `plugin install|update|remove`, `trust add` flags.
    let mut sig = None;
    let mut allow_downgrade = false;
    let mut purge_data = false;
    let mut comment = None;
    // `system safe-mode` flag.
    let mut leave = false;
    // `license` flags.
    let mut plugin = None;
    let mut instance = None;
    let mut features = Vec::new();
    let mut not_before = None;
    let mut expires = None;
    // `plugin new` flags.
    let mut lang = None;
    let mut new_dir = None;
    let mut sdk = None;
    // `system update` flags.
    let mut yes = false;
    let mut reboot = false;
    let mut status = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--version" | "-V" => return Ok((Cmd::Version, o)),
            "--help" | "-h" => return Ok((Cmd::Help, o)),
            "--config" => o.config = Some(PathBuf::from(value("--config")?)),
            "--listen" => o.listen = Some(value("--listen")?),
            "--data-dir" => o.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--plugins-dir" => o.plugins_dir = Some(PathBuf::from(value("--plugins-dir")?)),
            "--runtime-dir" => o.runtime_dir = Some(PathBuf::from(value("--runtime-dir")?)),
            "--log-level" => o.log_level = Some(value("--log-level")?),
            "--role" => role = Some(value("--role")?),
            "--json" => json_out = true,
            "--user" => user = Some(value("--user")?),
            "--key" => key = Some(PathBuf::from(value("--key")?)),
            "-o" | "--out" => out = Some(PathBuf::from(value("-o")?)),
            "--sig" => sig = Some(PathBuf::from(value("--sig")?)),
            "--allow-downgrade" => allow_downgrade = true,
            "--purge-data" => purge_data = true,
            "--yes" | "-y" => yes = true,
            "--reboot" => reboot = true,
            "--status" => status = true,
            "--comment" => comment = Some(value("--comment")?),
            "--leave" => leave = true,
            "--lang" => lang = Some(value("--lang")?),
            "--dir" => new_dir = Some(PathBuf::from(value("--dir")?)),
            "--sdk" => sdk = Some(PathBuf::from(value("--sdk")?)),
            "--plugin" => plugin = Some(value("--plugin")?),
            "--instance" => instance = Some(value("--instance")?),
            "--feature" => features.push(value("--feature")?),
            "--not-before" => not_before = Some(value("--not-before")?),
            "--expires" => expires = Some(value("--expires")?),
            "--limit" => {
                let v = value("--limit")?;
                limit = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("--limit: not a number: {v:?}"))?,
                );
            }
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            _ => words.push(a),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let role = role
        .map(|r| r.parse::<Role>())
        .transpose()
        .map_err(|e| format!("--role: {e}"))?;
    let role_or = |d: Role| role.unwrap_or(d);
    let cmd = match words.as_slice() {
        [] => Cmd::Serve,
        ["token", "create", name] => Cmd::Admin(
            Request::TokenCreate {
                name: name.to_string(),
                role: role_or(Role::Admin),
            },
            json_out,
        ),
        ["token", "list"] => Cmd::Admin(Request::TokenList, json_out),
        ["token", "revoke", name] => Cmd::Admin(
            Request::TokenRevoke {
                name: name.to_string(),
            },
            json_out,
        ),
        ["passwd"] => Cmd::Passwd {
            user: user.clone().unwrap_or_else(|| "admin".into()),
            role: role_or(Role::Admin),
        },
        ["plugins"] => Cmd::Admin(Request::Plugins, json_out),
        ["enable", id] => Cmd::Admin(Request::Enable { id: id.to_string() }, json_out),
        ["disable", id] => Cmd::Admin(Request::Disable { id: id.to_string() }, json_out),
        ["restart", id] => Cmd::Admin(Request::Restart { id: id.to_string() }, json_out),
        ["rescan"] => Cmd::Admin(Request::Rescan, json_out),
        ["plugins", "unbind", id] => Cmd::Admin(Request::Unbind { id: id.to_string() }, json_out),
        ["events"] => Cmd::Admin(
            Request::Events {
                plugin: None,
                limit: limit.unwrap_or(50),
            },
            json_out,
        ),
        ["events", p] => Cmd::Admin(
            Request::Events {
                plugin: Some(p.to_string()),
                limit: limit.unwrap_or(50),
            },
            json_out,
        ),
        ["store", "status"] => Cmd::Store(toru::store_cmd::StoreCommand::Status, json_out),
        ["store", "repair"] => Cmd::Store(toru::store_cmd::StoreCommand::Repair, json_out),
        ["store", "reset"] => Cmd::Store(toru::store_cmd::StoreCommand::Reset, json_out),
        // ── Plugin packages ─────────────────────────────────────────────────────────────────
        ["key", "generate", name] => Cmd::Pack(PackCommand::KeyGenerate {
            name: name.to_string(),
        }),
        ["plugin", "pack", dir] => Cmd::Pack(PackCommand::Pack {
            dir: PathBuf::from(dir),
            key: key.take(),
            out: out.take(),
        }),
        ["plugin", "check", file] => Cmd::Check {
            file: PathBuf::from(file),
            json: json_out,
        },
        ["plugin", verb @ ("install" | "update"), file] => Cmd::Install {
            file: PathBuf::from(file),
            sig: sig.take(),
            expect: if *verb == "install" {
                "install"
            } else {
                "update"
            },
            allow_downgrade: std::mem::take(&mut allow_downgrade),
            json: json_out,
        },
        ["plugin", "remove", id] => Cmd::Admin(
            Request::PluginRemove {
                id: id.to_string(),
                purge_data: std::mem::take(&mut purge_data),
            },
            json_out,
        ),
        ["plugin", "versions", id] => {
            Cmd::Admin(Request::PluginVersions { id: id.to_string() }, json_out)
        }
        ["plugin", "rollback", id] => {
            Cmd::Admin(Request::PluginRollback { id: id.to_string() }, json_out)
        }
        ["plugin", "security", id] => {
            Cmd::Admin(Request::PluginSecurity { id: id.to_string() }, json_out)
        }
        ["plugin", "limit", id, settings @ ..] if !settings.is_empty() => {
            let mut limits = serde_json::Map::new();
            for s in settings {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. memory=128M"))?;
                let value = match v {
                    "default" => serde_json::Value::Null,
                    v => v
                        .parse::<u64>()
                        .map(serde_json::Value::from)
                        .unwrap_or_else(|_| serde_json::Value::from(v)),
                };
                limits.insert(k.to_string(), value);
            }
            Cmd::Admin(
                Request::PluginLimits {
                    id: id.to_string(),
                    limits,
                },
                json_out,
            )
        }
        ["plugin", verb @ ("grant" | "revoke"), id, permission] => Cmd::Admin(
            Request::PluginGrant {
                id: id.to_string(),
                permission: permission.to_string(),
                grant: *verb == "grant",
            },
            json_out,
        ),
        ["trust", "add", file] => {
            let public_key =
                std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            Cmd::Admin(
                Request::TrustAdd {
                    public_key,
                    comment: comment.take().unwrap_or_default(),
                },
                json_out,
            )
        }
        ["trust", "list"] => Cmd::Admin(Request::TrustList, json_out),
        ["trust", "remove", key_id] => Cmd::Admin(
            Request::TrustRemove {
                key_id: key_id.to_string(),
            },
            json_out,
        ),
        ["plugin", "new", name] => Cmd::New(toru::plugin_new::NewCommand {
            name: name.to_string(),
            lang: lang
                .take()
                .ok_or("plugin new needs --lang rust or --lang python")?
                .parse()
                .map_err(|e| format!("--lang: {e}"))?,
            parent: new_dir.take().unwrap_or_else(|| PathBuf::from(".")),
            sdk: sdk.take(),
        }),
        ["system", "safe-mode"] => Cmd::Admin(
            Request::SafeMode {
                leave: std::mem::take(&mut leave),
            },
            json_out,
        ),
        // ── Licences ────────────────────────────────────────────────────────────────────────
        ["instance", "id"] => Cmd::Admin(Request::InstanceId, json_out),
        ["license", "install", file] => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            Cmd::Admin(
                Request::LicenseInstall {
                    text,
                    plugin: plugin.take(),
                },
                json_out,
            )
        }
        ["license", "list"] => Cmd::Admin(Request::LicenseList, json_out),
        ["license", "remove", id] => Cmd::Admin(
            Request::LicenseRemove {
                plugin: id.to_string(),
            },
            json_out,
        ),
        ["license", "issue"] => Cmd::Pack(PackCommand::LicenseIssue {
            key: key.take().ok_or("license issue needs --key NAME.key")?,
            plugin: plugin.take().ok_or("license issue needs --plugin ID")?,
            instance: instance
                .take()
                .ok_or("license issue needs --instance LICENSING_ID")?,
            features: std::mem::take(&mut features),
            not_before: not_before.take(),
            expires: expires.take(),
            out: out.take(),
        }),
        // ── end of plugin packages ──────────────────────────────────────────────────────────
        ["system", "update", file] if !status => Cmd::SystemUpdate(
            toru::update_cmd::UpdateCommand::Install {
                file: PathBuf::from(file),
                yes: std::mem::take(&mut yes),
                reboot: std::mem::take(&mut reboot),
            },
            json_out,
        ),
        ["system", "update"] if std::mem::take(&mut status) => {
            Cmd::SystemUpdate(toru::update_cmd::UpdateCommand::Status, json_out)
        }
        ["system", "reboot"] => {
            Cmd::SystemUpdate(toru::update_cmd::UpdateCommand::Reboot, json_out)
        }
        other => return Err(format!("unknown command: {}", other.join(" "))),
    };
    if key.is_some() || out.is_some() {
        return Err("--key and -o belong to `toru plugin pack` and `toru license issue`".into());
    }
    if plugin.is_some() {
        return Err("--plugin belongs to `toru license install|issue`".into());
    }
    if instance.is_some() || !features.is_empty() || not_before.is_some() || expires.is_some() {
        return Err(
            "--instance, --feature, --not-before and --expires belong to `toru license issue`"
                .into(),
        );
    }
    if sig.is_some() || allow_downgrade {
        return Err("--sig and --allow-downgrade belong to `toru plugin install|update`".into());
    }
    if purge_data {
        return Err("--purge-data belongs to `toru plugin remove`".into());
    }
    if comment.is_some() {
        return Err("--comment belongs to `toru trust add`".into());
    }
    if leave {
        return Err("--leave belongs to `toru system safe-mode`".into());
    }
    if yes || reboot || status {
        return Err(
            "--yes and --reboot belong to `toru system update FILE`, --status to `toru system \
             update --status`"
                .into(),
        );
    }
    if lang.is_some() || new_dir.is_some() || sdk.is_some() {
        return Err("--lang, --dir and --sdk belong to `toru plugin new`".into());
    }
    Ok((cmd, o))
}

/// Read a password from a TTY without echo, or one line from stdin.
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_hidden("New password: ")?;
        let second = prompt_hidden("Again: ")?;
        if first != second {
            return Err("the passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn prompt_hidden(prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let echo_off = toru::sys::stdin_echo_off();
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    drop(echo_off);
    eprintln!();
    r.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn print_result(req_kind: &Request, v: &serde_json::Value) {
    match req_kind {
        Request::TokenCreate { .. } => {
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("Token created. It is shown only now; store it safely.");
        }
        Request::TokenList => {
            for t in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    t["name"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["created"].as_str().unwrap_or("")
                );
            }
        }
        Request::Enable { .. } | Request::Disable { .. } | Request::Restart { .. } => {
            println!(
                "{}\t{}",
                v["id"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or("")
            );
        }
        Request::Rescan => println!("{v}"),
        Request::Unbind { id } => eprintln!(
            "{id:?} is no longer bound to {}; the next rescan gives it to the file that claims it.",
            v["file"].as_str().unwrap_or("its file")
        ),
        Request::Plugins => {
            for p in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    p["id"].as_str().unwrap_or(""),
                    p["state"].as_str().unwrap_or(""),
                    if p["enabled"] == serde_json::json!(true) {
                        "enabled"
                    } else {
                        "disabled"
                    }
                );
            }
        }
        Request::Events { .. } => {
            for e in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}",
                    e["at"].as_str().unwrap_or(""),
                    e["plugin"].as_str().unwrap_or(""),
                    e["kind"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
        }
        Request::TokenRevoke { name } => eprintln!("Token {name:?} revoked."),
        Request::PluginInstall { .. } | Request::PluginRollback { .. } => println!(
            "{} {}: {}",
            v["id"].as_str().unwrap_or(""),
            v["version"].as_str().unwrap_or(""),
            v["result"].as_str().unwrap_or("")
        ),
        Request::PluginSecurity { .. }
        | Request::PluginLimits { .. }
        | Request::PluginGrant { .. } => print_security(v),
        Request::PluginRemove { id, purge_data } => eprintln!(
            "{id} removed{}.",
            if *purge_data {
                " with its data"
            } else {
                "; its data is kept for a later install by the same publisher"
            }
        ),
        Request::PluginVersions { .. } => {
            let active = v["active"].as_str().unwrap_or("");
            for ver in v["versions"].as_array().into_iter().flatten() {
                let this = ver["version"].as_str().unwrap_or("");
                println!(
                    "{}{this}\t{}\t{}",
                    if this == active { "* " } else { "  " },
                    ver["installed_at"].as_str().unwrap_or(""),
                    ver["key_id"].as_str().unwrap_or("unsigned")
                );
            }
            if let Some(u) = v["last_update"].as_object() {
                println!(
                    "last update: {} {} -> {}{}",
                    u.get("result").and_then(|r| r.as_str()).unwrap_or(""),
                    u.get("from").and_then(|r| r.as_str()).unwrap_or("-"),
                    u.get("to").and_then(|r| r.as_str()).unwrap_or(""),
                    u.get("reason")
                        .and_then(|r| r.as_str())
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
            }
        }
        Request::TrustAdd { .. } => {
            eprintln!("Key {} is trusted.", v["key_id"].as_str().unwrap_or(""))
        }
        Request::TrustList => {
            for k in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    k["key_id"].as_str().unwrap_or(""),
                    k["added_at"].as_str().unwrap_or(""),
                    k["comment"].as_str().unwrap_or("")
                );
            }
        }
        Request::TrustRemove { key_id } => eprintln!("Key {key_id} is no longer trusted."),
        Request::InstanceId => {
            println!("instance id   {}", v["instance_id"].as_str().unwrap_or(""));
            println!(
                "licensing id  {}",
                v["licensing_id"]
                    .as_str()
                    .unwrap_or("none (the store cannot be written)")
            );
        }
        Request::LicenseInstall { .. } => {
            let c = &v["claims"];
            eprintln!(
                "Licence for {} installed (features: {}; expires: {}).",
                v["plugin"].as_str().unwrap_or(""),
                c["features"]
                    .as_array()
                    .map(|f| f
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "none".into()),
                c["expires"].as_str().unwrap_or("never")
            )
        }
        Request::LicenseList => {
            for l in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}",
                    l["plugin"].as_str().unwrap_or(""),
                    l["state"].as_str().unwrap_or(""),
                    l["claims"]["expires"]
                        .as_str()
                        .unwrap_or(if l["claims"].is_null() { "-" } else { "never" }),
                    l["reason"].as_str().unwrap_or("")
                );
            }
        }
        Request::LicenseRemove { plugin } => eprintln!("Licence for {plugin} removed."),
        Request::SafeMode { leave } => print_safe_mode(v, *leave),
        Request::UpdateStatus => toru::update_cmd::print_status(v),
        Request::UpdateUpload { .. }
        | Request::UpdateInstall { .. }
        | Request::UpdateCancel { .. }
        | Request::Reboot => println!("{v}"),
        Request::Passwd { user, .. } => {
            eprintln!("Password for {user:?} set; their sessions were ended.")
        }
    }
}

fn main() -> ExitCode {
    let (cmd, overrides) = match parse(std::env::args().skip(1).collect()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("toru: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cmd, Cmd::Serve | Cmd::Check { .. }) {
        // A command's output piped into `head` ends quietly, as other tools do, not in a panic.
        // (`plugin check` must clean up first: it ignores a closed stdout instead.)
        toru::sys::sigpipe_default();
    }
    match cmd {
        Cmd::Version => {
            println!("toru {}", toru::VERSION);
            return ExitCode::SUCCESS;
        }
        Cmd::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        // Offline: no config, no store, no daemon.
        Cmd::Pack(cmd) => return toru::pack_cmd::run(cmd),
        // Offline, with the host's timeouts: the defaults, or `--config FILE` alone (no
        // environment: a check must not depend on the shell it runs in).
        Cmd::Check { file, json } => {
            let only_file = Overrides {
                config: overrides.config.clone(),
                ..Overrides::default()
            };
            return match Config::load(&only_file, &|_| None) {
                Ok(config) => toru::check::run(&config, &file, json),
                Err(e) => {
                    eprintln!("toru: {}", error_chain(&e));
                    ExitCode::from(2)
                }
            };
        }
        Cmd::New(cmd) => return toru::plugin_new::run(cmd),
        _ => {}
    }
    let config = match Config::load(&overrides, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("toru: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let notifier = toru::notify::Notifier::from_env(&|k| std::env::var(k).ok());
    let level = if matches!(cmd, Cmd::Serve) {
        config.log_level
    } else {
        log::LevelFilter::Warn
    };
    let log_config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, log_config, std::io::stderr());
    for d in &config.deprecations {
        log::warn!("{d}");
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toru: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match cmd {
        Cmd::Serve => {
            let result = local.block_on(&runtime, serve(config, notifier));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("toru: {}", error_chain(&e));
                    log::error!("{}", error_chain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Cmd::Passwd { user, role } => {
            let password = match read_password() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("toru: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let req = Request::Passwd {
                user,
                password,
                role,
            };
            run_admin(&local, &runtime, &config, req, false)
        }
        Cmd::Admin(req, json) => run_admin(&local, &runtime, &config, req, json),
        Cmd::SystemUpdate(cmd, json) => {
            local.block_on(&runtime, toru::update_cmd::run(&config, cmd, json))
        }
        Cmd::Store(cmd, json) => toru::store_cmd::run(&config, cmd, json),
        Cmd::Install {
            file,
            sig,
            expect,
            allow_downgrade,
            json,
        } => {
            let run = admin::run_install(&config, &file, sig.as_deref(), expect, allow_downgrade);
            match local.block_on(&runtime, run) {
                Ok(v) if json => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    let req = Request::PluginInstall {
                        size: 0,
                        signature: None,
                        expect: expect.into(),
                        allow_downgrade,
                    };
                    print_result(&req, &v);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("toru: {}", error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Version | Cmd::Help | Cmd::Pack(_) | Cmd::Check { .. } | Cmd::New(_) => {
            ExitCode::SUCCESS
        }
    }
}

/// Run the host: signal handlers first (from then on SIGHUP no longer kills the process), then the
/// store (a second instance stops here with exit code 3), then the HTTP listener, then
/// [`toru::run`] until SIGTERM or SIGINT.
async fn serve(config: Config, notifier: toru::notify::Notifier) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;

    let addr = config.listen;
    let prepared = toru::prepare(config)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { addr, source })?;

    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
    };
    // One pending rescan is enough: SIGHUPs that arrive while one waits fold into it.
    let (rescan_tx, rescans) = tokio::sync::mpsc::channel(1);
    let forward_hup = async move {
        loop {
            tokio::select! {
                // `run` returned and dropped the receiver: nothing is left to forward to.
                () = rescan_tx.closed() => break,
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    log::info!("SIGHUP: rescanning plugins");
                    let _ = rescan_tx.try_send(());
                }
            }
        }
    };
    let (result, ()) = tokio::join!(
        toru::run(prepared, listener, notifier, shutdown, rescans),
        forward_hup
    );
    result
}

fn run_admin(
    local: &tokio::task::LocalSet,
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    req: Request,
    json: bool,
) -> ExitCode {
    let shown = match &req {
        Request::Passwd { user, role, .. } => Request::Passwd {
            user: user.clone(),
            password: String::new(),
            role: *role,
        },
        other => other.clone(),
    };
    match local.block_on(runtime, admin::run_cli(config, req)) {
        Ok(v) if json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print_result(&shown, &v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toru: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Safe mode (`toru system safe-mode [--leave]`) for people.
fn print_safe_mode(v: &serde_json::Value, left: bool) {
    let list = |v: &serde_json::Value| {
        let items: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    if left {
        eprintln!("Safe mode left; the held plugins start.");
    }
    let count = v["unclean_in_a_row"].as_u64().unwrap_or(0);
    let after = v["after_unclean"].as_u64().unwrap_or(0);
    if v["active"] == serde_json::json!(true) {
        println!(
            "safe mode   ACTIVE since {}",
            v["entered_at"].as_str().unwrap_or("?")
        );
    } else if after == 0 {
        println!("safe mode   off (after_unclean = 0)");
    } else {
        println!("safe mode   not active");
    }
    println!("unclean     {count} in a row (safe mode after {after})");
    println!("likely      {}", list(&v["likely_culprits"]));
    println!("held        {}", list(&v["held"]));
    println!("kept        {}", list(&v["keep"]));
    for c in v["culprits"].as_array().into_iter().flatten() {
        println!(
            "exit found  {}: up then: {}",
            c["at"].as_str().unwrap_or(""),
            list(&c["plugins"])
        );
    }
}

/// A plugin's security (`toru plugin security ID`) for people.
fn print_security(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let u = &v["user"];
    println!(
        "isolation {}{}",
        s(&v["isolation"]),
        v["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "user      uid {} gid {} groups [{}]",
        s(&u["uid"]),
        s(&u["gid"]),
        u["groups"]
            .as_array()
            .map(|g| g.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    for f in ["data", "install", "socket"] {
        println!("{f:<9} {}", s(&v["folders"][f]));
    }
    println!("network   {}", s(&v["network"]));
    if let Some(limits) = v["limits"].as_object() {
        for (k, l) in limits {
            let value = match (&l["value"], k.as_str()) {
                (serde_json::Value::Null, _) => "unlimited".to_string(),
                (n, "memory" | "address_space") => {
                    n.as_u64().map_or_else(|| s(n), toru::limits::human_bytes)
                }
                (n, "cpu") => format!("{} cores", s(n)),
                (n, _) => s(n),
            };
            println!("limit     {k:<14} {value:<14} ({})", s(&l["source"]));
        }
    }
    for p in v["protections"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {:<9} {}",
            s(&p["name"]),
            s(&p["state"]),
            s(&p["detail"])
        );
    }
}
