//! The seccomp filter: a hand-written classic-BPF deny list, built in the parent and installed
//! last before exec (`sys::PreExec`).
//!
//! The program, for the one architecture the host is built for (x86_64, aarch64 or 32-bit ARM):
//! ```text
//!   load arch;   arch != ours            → EPERM     (i386 or x32 code on x86_64: nothing works)
//!   load nr;     nr ≥ 0x40000000 (x86_64) → EPERM     (x32 numbers on the x86_64 arch value)
//!   nr == denied[0]                      → EPERM
//!   …
//!   nr == denied[n-1]                    → EPERM
//!   ALLOW
//! ```
//! Numbers come from `libc::SYS_*`; a name this architecture lacks (`iopl` off x86) is skipped.
//! No crate: the list is a few dozen instructions, and `seccompiler` does not support 32-bit ARM.
//! Nothing here installs anything; `sys` does, in the child.

use libc::sock_filter;

use super::DENIED;

// Every jump in the program is a relative u8 offset; the longest is the list's length + 1.
const _: () = assert!(DENIED.len() < 250);

/// `AUDIT_ARCH_*` (linux/audit.h; not in the libc crate): ELF machine | 64-bit | little-endian.
#[cfg(target_pointer_width = "64")]
const AUDIT_ARCH_64BIT: u32 = 0x8000_0000;
const AUDIT_ARCH_LE: u32 = 0x4000_0000;
#[cfg(target_arch = "x86_64")]
const ARCH: Option<u32> = Some(62 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE); // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const ARCH: Option<u32> = Some(183 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE); // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "arm")]
const ARCH: Option<u32> = Some(40 | AUDIT_ARCH_LE); // AUDIT_ARCH_ARM
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
const ARCH: Option<u32> = None;

/// x32 system calls carry this bit in their number (`__X32_SYSCALL_BIT`) under the x86_64 arch.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// `struct seccomp_data`: `int nr` at 0, `__u32 arch` at 4.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

/// This architecture's number for a system call of [`DENIED`]; `None` for names it lacks (and for
/// names not in the list).
fn number(name: &str) -> Option<libc::c_long> {
    let nr = match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "mount_setattr" => libc::SYS_mount_setattr,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => SYS_KEXEC_FILE_LOAD,
        "bpf" => libc::SYS_bpf,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "acct" => libc::SYS_acct,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "quotactl" => libc::SYS_quotactl,
        "syslog" => libc::SYS_syslog,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        _ => return None,
    };
    Some(nr)
}

/// `kexec_file_load`: the libc crate lacks it for the musl ARM targets; the kernel's numbers
/// (asm-generic 294 on aarch64, 401 on 32-bit ARM) are fixed ABI.
#[cfg(target_arch = "x86_64")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = libc::SYS_kexec_file_load;
#[cfg(target_arch = "aarch64")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = 294;
#[cfg(target_arch = "arm")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = 401;

/// A built filter and what it does, for the report.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    pub(super) program: Vec<sock_filter>,
    /// Names refused (in [`DENIED`], not lifted, known on this architecture).
    pub(super) refused: Vec<&'static str>,
    /// Names of [`DENIED`] the plugin may call (its permission).
    pub(super) lifted: Vec<&'static str>,
    /// Names asked for that are not in [`DENIED`] (ignored).
    pub(super) unknown: Vec<String>,
}

/// The deny list minus `allow`; `None` on an architecture without a filter here.
pub(super) fn build(allow: &[String]) -> Option<Filter> {
    let arch = ARCH?;
    let lifted: Vec<&'static str> = DENIED
        .iter()
        .copied()
        .filter(|d| allow.iter().any(|a| a == d))
        .collect();
    let unknown: Vec<String> = allow
        .iter()
        .filter(|a| !DENIED.contains(&a.as_str()))
        .cloned()
        .collect();
    let mut refused = Vec::new();
    let mut numbers = Vec::new();
    for name in DENIED.iter().copied().filter(|d| !lifted.contains(d)) {
        if let Some(nr) = number(name).and_then(|n| u32::try_from(n).ok()) {
            refused.push(name);
            numbers.push(nr);
        }
    }
    Some(Filter {
        program: program(arch, &numbers),
        refused,
        lifted,
        unknown,
    })
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump from instruction `at` to `target` when true, to the next one when false.
fn jump_if(code: u16, k: u32, at: usize, target: usize) -> sock_filter {
    sock_filter {
        code,
        // `target` is at most DENIED.len() + 1 instructions ahead (asserted above).
        jt: u8::try_from(target - at - 1).unwrap_or(u8::MAX),
        jf: 0,
        k,
    }
}

/// The program refusing `numbers` (see the module doc for its shape).
fn program(arch: u32, numbers: &[u32]) -> Vec<sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        // Our arch: skip the refusal that follows.
        sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 1,
            jf: 0,
            k: arch,
        },
        stmt(BPF_RET_K, RET_EPERM),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    let checks = numbers.len() + usize::from(cfg!(target_arch = "x86_64"));
    // After the checks: ALLOW, then the shared refusal.
    let deny = p.len() + checks + 1;
    #[cfg(target_arch = "x86_64")]
    p.push(jump_if(BPF_JMP_JGE_K, X32_SYSCALL_BIT, p.len(), deny));
    for &nr in numbers {
        p.push(jump_if(BPF_JMP_JEQ_K, nr, p.len(), deny));
    }
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p.push(stmt(BPF_RET_K, RET_EPERM));
    debug_assert_eq!(p.len(), deny + 1);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one `seccomp_data` (nr, arch): a tiny interpreter of the four
    /// instructions it uses, so the jumps are checked without a kernel.
    fn run(program: &[sock_filter], nr: u32, arch: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = if i.k == OFFSET_NR { nr } else { arch };
                    pc += 1;
                }
                BPF_RET_K => return i.k,
                code => {
                    let taken = if code == BPF_JMP_JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    #[test]
    fn every_name_is_unique_and_known_on_this_architecture_unless_arch_specific() {
        for (i, name) in DENIED.iter().enumerate() {
            assert!(!DENIED[..i].contains(name), "{name} twice");
            let arch_specific = matches!(*name, "iopl" | "ioperm");
            assert!(number(name).is_some() || arch_specific, "{name}");
        }
    }

    #[test]
    fn the_program_refuses_the_list_and_foreign_code_and_allows_the_rest() {
        let arch = ARCH.expect("a supported architecture");
        let f = build(&["ptrace".into(), "no_such_call".into()]).expect("filter");
        assert_eq!(f.lifted, ["ptrace"]);
        assert_eq!(f.unknown, ["no_such_call"]);
        assert!(!f.refused.contains(&"ptrace") && f.refused.contains(&"mount"));
        let nr = |n: libc::c_long| u32::try_from(n).expect("number");
        assert_eq!(run(&f.program, nr(libc::SYS_mount), arch), RET_EPERM);
        assert_eq!(run(&f.program, nr(libc::SYS_unshare), arch), RET_EPERM);
        assert_eq!(run(&f.program, nr(libc::SYS_ptrace), arch), RET_ALLOW);
        assert_eq!(run(&f.program, nr(libc::SYS_read), arch), RET_ALLOW);
        assert_eq!(run(&f.program, nr(libc::SYS_read), arch ^ 1), RET_EPERM);
        let last = nr(number(f.refused[f.refused.len() - 1]).expect("known"));
        assert_eq!(run(&f.program, last, arch), RET_EPERM);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            run(&f.program, X32_SYSCALL_BIT | nr(libc::SYS_read), arch),
            RET_EPERM
        );
    }
}
