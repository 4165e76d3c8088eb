//! Plans applied to real children (`/bin/sh -c …`), checked from inside them. The root-only ones
//! say "skipped: needs root" and return when the tests do not run as root; the Landlock ones skip
//! with a message on a kernel without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::*;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(prepared: &Prepared, program: &str, script: &str) -> Out {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("-c")
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    before_exec(&mut cmd, prepared);
    let out = cmd.output().await.expect("spawn");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn sh(prepared: &Prepared, script: &str) -> Out {
    run(prepared, "/bin/sh", script).await
}

fn is_root() -> bool {
    sys::effective_uid() == 0
}

/// Whether these tests run under an emulator (qemu-user): the machine's native `uname` names
/// another architecture than the one they were built for.
fn emulated() -> bool {
    let out = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .unwrap();
    let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let native = match std::env::consts::ARCH {
        "arm" => machine.starts_with("arm"),
        arch => machine == arch,
    };
    !native
}

/// A fresh temp dir for one test.
fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toru-confine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `Max <what>` soft and hard values of a `/proc/PID/limits` text.
fn limit(limits: &str, what: &str) -> Vec<String> {
    let line = limits
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {limits}"));
    line[what.len()..]
        .split_whitespace()
        .take(2)
        .map(str::to_string)
        .collect()
}

fn status_line(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn protections_serialise_as_state_and_detail() {
    let v = serde_json::to_value(Protection::Degraded("why".into())).unwrap();
    assert_eq!(v, serde_json::json!({"state": "degraded", "detail": "why"}));
    let v = serde_json::to_value(Protection::Enforced("x".into())).unwrap();
    assert_eq!(v["state"], "enforced");
    let report = prepare(Plan::minimal(10)).report().clone();
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["seccomp"]["state"], "off");
    assert_eq!(v["no_new_privs"]["state"], "enforced");
}

#[tokio::test]
async fn limits_and_no_new_privs_hold_in_every_child_of_one_prepared_plan() {
    let mut plan = Plan::minimal(77);
    plan.rlimits.address_space = Some(1 << 31);
    let prepared = prepare(plan);
    assert_eq!(
        prepared.report().rlimits,
        Protection::Enforced("open files 77, address space 2147483648, no core dumps".to_string())
    );
    // Twice from the same Prepared: a retried spawn re-uses it.
    for _ in 0..2 {
        let out = sh(&prepared, "cat /proc/self/limits /proc/self/status").await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(limit(&out.stdout, "Max open files"), ["77", "77"]);
        assert_eq!(limit(&out.stdout, "Max core file size"), ["0", "0"]);
        if emulated() {
            // qemu-user keeps RLIMIT_AS for itself (guest memory is its own business).
            println!("under emulation: the address-space limit is not checked");
        } else {
            assert_eq!(
                limit(&out.stdout, "Max address space"),
                ["2147483648", "2147483648"]
            );
        }
        assert_eq!(status_line(&out.stdout, "NoNewPrivs:"), "1");
        assert_eq!(status_line(&out.stdout, "Seccomp:"), "0", "no filter asked");
    }
}

#[tokio::test]
async fn hidden_paths_cannot_be_read_the_rest_only_read_and_grants_written() {
    let dir = temp("landlock");
    for d in ["hidden/inner", "open", "rw", "hidden/granted"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("hidden/inner/secret"), b"secret").unwrap();
    std::fs::write(dir.join("hidden/granted/tool"), b"tool").unwrap();
    std::fs::write(dir.join("open/file"), b"public").unwrap();
    let mut plan = Plan::minimal(64);
    plan.fs = Some(FsRules {
        hidden: vec![dir.join("hidden")],
        read_exec: vec![dir.join("hidden/granted")],
        read_write: vec![dir.join("rw")],
    });
    let prepared = prepare(plan);
    let Protection::Enforced(detail) = &prepared.report().landlock else {
        println!(
            "skipped: no Landlock here ({:?})",
            prepared.report().landlock
        );
        return;
    };
    assert!(detail.starts_with("Landlock ABI "), "{detail}");
    let d = dir.display();
    let script = format!(
        "cat {d}/open/file; echo; \
         cat {d}/hidden/inner/secret && echo LEAKED; \
         ls {d}/hidden && echo LISTED; \
         cat {d}/hidden/granted/tool; echo; \
         echo written > {d}/rw/new && cat {d}/rw/new; \
         echo nope > {d}/open/new && echo WROTE; \
         echo nope > {d}/hidden/granted/new && echo WROTE; \
         cat /dev/null && echo > /dev/null && echo devnull"
    );
    let out = sh(&prepared, &script).await;
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["public", "tool", "written", "devnull"],
        "stderr: {}",
        out.stderr
    );
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    assert!(!dir.join("open/new").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn grant_paths_that_do_not_exist_are_skipped_and_named() {
    let mut plan = Plan::minimal(64);
    plan.fs = Some(FsRules {
        hidden: vec![],
        read_exec: vec![],
        read_write: vec![PathBuf::from("/nonexistent/toru-grant")],
    });
    let prepared = prepare(plan);
    if let Protection::Enforced(detail) = &prepared.report().landlock {
        assert!(
            detail.contains("grants skipped: /nonexistent/toru-grant"),
            "{detail}"
        );
        let out = sh(&prepared, "echo ran").await;
        assert_eq!(out.stdout, "ran\n", "{}", out.stderr);
    } else {
        println!("skipped: no Landlock here");
    }
}

#[tokio::test]
async fn the_filter_refuses_denied_calls_unless_allowed() {
    let mut plan = Plan::minimal(64);
    plan.syscalls = Some(SyscallFilter {
        allow: vec!["no_such_call".into()],
    });
    let prepared = prepare(plan.clone());
    let Protection::Enforced(detail) = &prepared.report().seccomp else {
        println!("skipped: no seccomp here ({:?})", prepared.report().seccomp);
        return;
    };
    assert!(
        detail.contains("unknown names ignored: no_such_call"),
        "{detail}"
    );
    // `-r` (a user namespace) lets it work unprivileged; as root the plain call works too.
    let unshare = if is_root() {
        "unshare -n true"
    } else {
        "unshare -rn true"
    };
    let mnt = temp("mount");
    let script = format!(
        "grep Seccomp: /proc/self/status; {unshare} && echo UNSHARED; \
         mount -t tmpfs none {m} && echo MOUNTED && umount {m}",
        m = mnt.display()
    );
    let out = sh(&prepared, &script).await;
    assert_eq!(status_line(&out.stdout, "Seccomp:"), "2", "filter mode");
    assert!(!out.stdout.contains("UNSHARED"), "{}", out.stdout);
    assert!(!out.stdout.contains("MOUNTED"), "{}", out.stdout);
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );

    plan.syscalls = Some(SyscallFilter {
        allow: vec!["unshare".into()],
    });
    let lifted = prepare(plan);
    let Protection::Enforced(detail) = &lifted.report().seccomp else {
        panic!("{:?}", lifted.report().seccomp);
    };
    assert!(
        detail.contains("allowed by permission: unshare"),
        "{detail}"
    );
    let out = sh(&lifted, &format!("{unshare} && echo UNSHARED")).await;
    if is_root() || !out.stderr.contains("Operation not permitted") {
        assert_eq!(out.stdout, "UNSHARED\n", "{}", out.stderr);
    } else {
        println!("no unprivileged user namespaces here: lifting not checked");
    }
    std::fs::remove_dir_all(&mnt).unwrap();
}

#[tokio::test]
async fn as_root_the_child_takes_the_given_user_and_groups() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let mut plan = Plan::minimal(64);
    plan.user = Some(Ids {
        uid: 70123,
        gid: 70124,
        groups: vec![70125, 70126],
    });
    plan.rlimits.processes = Some(50);
    plan.syscalls = Some(SyscallFilter { allow: vec![] });
    let prepared = prepare(plan);
    assert!(matches!(prepared.report().user, Protection::Enforced(_)));
    let out = sh(&prepared, "cat /proc/self/status /proc/self/limits").await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(status_line(&out.stdout, "Uid:"), "70123 70123 70123 70123");
    assert_eq!(status_line(&out.stdout, "Gid:"), "70124 70124 70124 70124");
    assert_eq!(status_line(&out.stdout, "Groups:"), "70125 70126");
    assert_eq!(status_line(&out.stdout, "NoNewPrivs:"), "1");
    assert_eq!(limit(&out.stdout, "Max processes"), ["50", "50"]);
}

#[tokio::test]
async fn as_root_a_new_network_namespace_has_only_loopback_and_reaches_nothing_outside() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|b| Path::new(b).exists())
    else {
        println!("skipped: no bash for /dev/tcp");
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "cat /proc/net/dev; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED"
    );

    // The method works where the network is the host's.
    let shared = prepare(Plan::minimal(64));
    assert_eq!(
        shared.report().network,
        Protection::Off("the host's network".into())
    );
    let out = run(&shared, bash, &script).await;
    assert!(out.stdout.contains("CONNECTED"), "{}", out.stdout);

    let mut plan = Plan::minimal(64);
    plan.new_netns = true;
    let alone = prepare(plan);
    assert!(matches!(alone.report().network, Protection::Enforced(_)));
    let out = run(&alone, bash, &script).await;
    let interfaces: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| !name.contains('|'))
        .collect();
    assert_eq!(interfaces, ["lo"], "{}", out.stdout);
    assert!(!out.stdout.contains("CONNECTED"), "{}", out.stdout);
}

#[tokio::test]
async fn as_root_every_step_applies_together_in_its_order() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let dir = temp("all");
    std::fs::create_dir_all(dir.join("hidden")).unwrap();
    std::fs::write(dir.join("hidden/secret"), b"secret").unwrap();
    // Private to root: where Landlock is missing (qemu-user), the mode still keeps it.
    std::fs::set_permissions(
        dir.join("hidden/secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let plan = Plan {
        user: Some(Ids {
            uid: 70127,
            gid: 70127,
            groups: vec![],
        }),
        rlimits: Rlimits {
            open_files: 99,
            processes: Some(40),
            address_space: None,
        },
        fs: Some(FsRules {
            hidden: vec![dir.join("hidden")],
            read_exec: vec![],
            read_write: vec![],
        }),
        syscalls: Some(SyscallFilter { allow: vec![] }),
        new_netns: true,
        parent_pid: std::process::id(),
    };
    let prepared = prepare(plan);
    let script = format!(
        "cat /proc/self/status /proc/net/dev; cat {}/hidden/secret && echo LEAKED",
        dir.display()
    );
    let out = sh(&prepared, &script).await;
    assert_eq!(status_line(&out.stdout, "Uid:"), "70127 70127 70127 70127");
    assert_eq!(status_line(&out.stdout, "Groups:"), "");
    assert_eq!(status_line(&out.stdout, "NoNewPrivs:"), "1");
    // qemu-user refuses PR_SET_SECCOMP: the report says degraded, and the child has no filter.
    if matches!(prepared.report().seccomp, Protection::Enforced(_)) {
        assert_eq!(status_line(&out.stdout, "Seccomp:"), "2");
    } else {
        assert!(
            emulated(),
            "seccomp degraded natively: {:?}",
            prepared.report()
        );
        println!(
            "no seccomp filter here (emulated): {:?}",
            prepared.report().seccomp
        );
    }
    assert!(!out.stdout.contains("eth"), "{}", out.stdout);
    assert!(!out.stdout.contains("LEAKED"), "{}", out.stdout);
    if !matches!(prepared.report().landlock, Protection::Enforced(_)) {
        println!("no Landlock here: only the file's mode kept it");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
