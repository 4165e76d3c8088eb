//! Pure parsers of the kernel's text files: `/proc/stat`, `/proc/meminfo`, `/proc/uptime`,
//! `/proc/loadavg`, `/proc/self/mounts`, a thermal zone's `temp`, and a Raspberry Pi's
//! `get_throttled` and `in0_lcrit_alarm`. Text in, values out: no file is opened here (that is
//! `collect`), so every case — odd lines, missing fields, garbage — is unit-tested with fixture
//! text. A line that cannot be read is skipped, never an error.

/// One CPU's time counters from `/proc/stat`, in clock ticks since boot: everything, and the part
/// spent idle (`idle` + `iowait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuTimes {
    /// `user + nice + system + idle + iowait + irq + softirq + steal` (`guest` and `guest_nice`
    /// are already counted in `user` and `nice`).
    pub total: u64,
    /// `idle + iowait`.
    pub idle: u64,
}

/// The CPU lines of `/proc/stat`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StatCpus {
    /// The `cpu` line (all CPUs together).
    pub all: Option<CpuTimes>,
    /// The `cpuN` lines: (N, counters), in file order (an offline CPU has no line).
    pub cores: Vec<(usize, CpuTimes)>,
}

/// Parse `/proc/stat`. Lines other than `cpu`/`cpuN` are ignored; a CPU line with fewer than the
/// four fields every kernel has (`user nice system idle`) or a field that is not a number is
/// skipped. Older kernels have fewer than ten fields: the missing ones count as 0.
pub(crate) fn parse_stat(text: &str) -> StatCpus {
    let mut out = StatCpus::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(rest) = name.strip_prefix("cpu") else {
            continue;
        };
        let Some(times) = cpu_times(fields) else {
            continue;
        };
        if rest.is_empty() {
            out.all = Some(times);
        } else if let Ok(n) = rest.parse::<usize>() {
            out.cores.push((n, times));
        }
    }
    out
}

fn cpu_times<'a>(fields: impl Iterator<Item = &'a str>) -> Option<CpuTimes> {
    let mut v = [0u64; 8];
    let mut n = 0;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: the first eight.
    for f in fields.take(8) {
        v[n] = f.parse().ok()?;
        n += 1;
    }
    if n < 4 {
        return None;
    }
    let total = v.iter().try_fold(0u64, |a, b| a.checked_add(*b))?;
    Some(CpuTimes {
        total,
        idle: v[3].checked_add(v[4])?,
    })
}

/// The busy share between two readings of one CPU, in percent (0–100); `None` when no tick passed
/// or a counter went backwards (a CPU that went offline and came back, a counter reset).
pub(crate) fn busy_percent(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let idle = cur.idle.checked_sub(prev.idle)?;
    if total == 0 || idle > total {
        return None;
    }
    Some((total - idle) as f64 * 100.0 / total as f64)
}

/// The figures of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`; on kernels before 3.14, which lack it, `MemFree + Buffers + Cached`.
    pub available: u64,
    /// `SwapTotal` (0 when absent).
    pub swap_total: u64,
    /// `SwapFree` (0 when absent).
    pub swap_free: u64,
}

/// Parse `/proc/meminfo` (`Name:   value kB` lines). `None` without a `MemTotal`. A value with
/// no unit is bytes (the `HugePages_*` counters are counts; they are not read).
pub(crate) fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached, mut swap_total, mut swap_free) = (0, 0, 0, 0, 0);
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(n)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            None => n,
            Some(u) if u.eq_ignore_ascii_case("kb") => n.saturating_mul(1024),
            Some(_) => continue,
        };
        match name.trim() {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = bytes,
            "Buffers" => buffers = bytes,
            "Cached" => cached = bytes,
            "SwapTotal" => swap_total = bytes,
            "SwapFree" => swap_free = bytes,
            _ => {}
        }
    }
    let total = total?;
    let available = available
        .unwrap_or_else(|| free.saturating_add(buffers).saturating_add(cached))
        .min(total);
    Some(MemInfo {
        total,
        available,
        swap_total,
        swap_free: swap_free.min(swap_total),
    })
}

/// Seconds since boot: the first number of `/proc/uptime`.
pub(crate) fn parse_uptime(text: &str) -> Option<f64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// The 1, 5 and 15 minute load averages: the first three numbers of `/proc/loadavg`.
pub(crate) fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    let mut out = [0.0; 3];
    for slot in &mut out {
        *slot = it.next()?.ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    }
    Some(out)
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// What is mounted (`/dev/mmcblk0p2`, `overlay`, `server:/export`).
    pub device: String,
    /// Where.
    pub mount_point: String,
    /// The filesystem type (`ext4`, `vfat`, `nfs4`, …).
    pub fstype: String,
    /// Mounted read-only (`ro` among the options).
    pub read_only: bool,
}

/// Filesystem types that hold no disk's data: kernel interfaces (`proc`, `sysfs`, `cgroup2`, …),
/// memory (`tmpfs`, `ramfs`), and read-only images that are always full (`squashfs`: snaps).
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "cpuset",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "pipefs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sockfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Whether `fstype` is a pseudo filesystem (see [`PSEUDO_FS`]); `fuse.*` helpers such as
/// `fuse.gvfsd-fuse` and `fuse.portal` count as pseudo, other FUSE filesystems (`fuseblk`,
/// `fuse.sshfs`) do not.
pub(crate) fn is_pseudo_fs(fstype: &str) -> bool {
    PSEUDO_FS.contains(&fstype)
        || matches!(
            fstype,
            "fuse.gvfsd-fuse" | "fuse.portal" | "fuse.lxcfs" | "fuse.snapfuse"
        )
}

/// Parse `/proc/self/mounts`, keeping the real filesystems (see [`is_pseudo_fs`]). A mount point
/// mounted over again appears once, as the last (visible) mount. Lines with fewer than four
/// fields are skipped. The kernel writes a space, tab, newline and backslash in a field as
/// `\040`, `\011`, `\012`, `\134`; they are decoded.
pub(crate) fn parse_mounts(text: &str) -> Vec<MountEntry> {
    let mut out: Vec<MountEntry> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let fstype = unescape_octal(f[2]);
        if is_pseudo_fs(&fstype) {
            continue;
        }
        let entry = MountEntry {
            device: unescape_octal(f[0]),
            mount_point: unescape_octal(f[1]),
            fstype,
            read_only: f[3].split(',').any(|o| o == "ro"),
        };
        out.retain(|m| m.mount_point != entry.mount_point);
        out.push(entry);
    }
    out
}

/// Decode the kernel's `\NNN` octal escapes (three octal digits); anything else is kept as is.
pub(crate) fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A thermal zone's `temp` (millidegrees Celsius, may be negative) in degrees. `None` for
/// garbage and for values no sensor reports (below −273 °C or above 1000 °C, e.g. an error code
/// some drivers print).
pub(crate) fn parse_millidegrees(text: &str) -> Option<f64> {
    let milli: i64 = text.trim().parse().ok()?;
    let c = milli as f64 / 1000.0;
    (-273.0..=1000.0).contains(&c).then_some(c)
}

/// A Raspberry Pi's `get_throttled` value: the firmware's bit field, printed as hex by the kernel
/// (`50005`) or by `vcgencmd` (`throttled=0x50005`); both spellings are read.
pub(crate) fn parse_throttled(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 8 {
        return None;
    }
    u32::from_str_radix(t, 16).ok()
}

/// One condition the Pi's firmware reports, as named by Raspberry Pi's documentation of
/// `vcgencmd get_throttled`: whether it holds now and whether it happened since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ThrottleFlag {
    /// A stable name (`under_voltage`, `arm_frequency_capped`, `throttled`,
    /// `soft_temperature_limit`).
    pub name: &'static str,
    /// What a person reads.
    pub label: &'static str,
    /// The bit for "now" (0–3).
    pub now: bool,
    /// The bit for "has occurred since boot" (16–19).
    pub since_boot: bool,
}

/// The conditions of `get_throttled`: (name, label, bit for now; the since-boot bit is 16 higher).
const THROTTLE_BITS: [(&str, &str, u32); 4] = [
    ("under_voltage", "Under-voltage", 0),
    ("arm_frequency_capped", "ARM frequency capped", 1),
    ("throttled", "Throttled", 2),
    ("soft_temperature_limit", "Soft temperature limit", 3),
];

/// Decode a `get_throttled` value into its named flags (always the four conditions, in order).
pub(crate) fn throttle_flags(raw: u32) -> Vec<ThrottleFlag> {
    THROTTLE_BITS
        .iter()
        .map(|&(name, label, bit)| ThrottleFlag {
            name,
            label,
            now: raw & (1 << bit) != 0,
            since_boot: raw & (1 << (bit + 16)) != 0,
        })
        .collect()
}

/// A hwmon `*_alarm` file: `0` or `1`.
pub(crate) fn parse_alarm(text: &str) -> Option<bool> {
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A one-line sysfs value (`operstate`, `address`, `type`, a device tree `model`): trimmed, NULs
/// (device tree strings end with one) removed; `None` when empty.
pub(crate) fn sysfs_text(text: &str) -> Option<String> {
    let t = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A real `/proc/stat` of a 4-core Pi 4 (shortened), with the lines that are not CPUs.
    const STAT: &str = "\
cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0
cpu0 1393280 32966 572056 13203346 1956 0 12580 0 0 0
cpu1 1335101 35302 385237 13333340 3968 0 1200 0 0 0
cpu2 3751203 70862 1031811 8851045 5437 0 4790 0 0 0
cpu3 3652569 151566 1095615 11440752 5322 0 6625 0 0 0
intr 199292301 9 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 2306282346
btime 1700000000
processes 1123456
procs_running 2
procs_blocked 0
softirq 65734571 1 8123421 18 2 0 0 1 3 0 6
";

    #[test]
    fn stat_reads_the_total_and_every_core() {
        let s = parse_stat(STAT);
        let all = s.all.unwrap();
        assert_eq!(
            all.total,
            10132153 + 290696 + 3084719 + 46828483 + 16683 + 25195
        );
        assert_eq!(all.idle, 46828483 + 16683);
        assert_eq!(
            s.cores.iter().map(|c| c.0).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(s.cores[1].1.idle, 13333340 + 3968);
    }

    /// Old kernels have four fields, newer ten; guest time is part of user time and is not
    /// counted twice; a line that is short, not numeric or not a CPU is skipped.
    #[test]
    fn stat_survives_odd_lines() {
        let s = parse_stat(
            "cpu 10 0 10 80\n\
             cpu0 5 0 5 40 0 0 0 0 1000 1000\n\
             cpu1 1 2\n\
             cpu2 x 0 0 0\n\
             cpufreq 1 2 3 4\n\
             cpu7 1 1 1 1 1 1 1 1\n\
             \n\
             garbage\n",
        );
        assert_eq!(
            s.all,
            Some(CpuTimes {
                total: 100,
                idle: 80
            })
        );
        assert_eq!(
            s.cores,
            vec![
                (
                    0,
                    CpuTimes {
                        total: 50,
                        idle: 40
                    }
                ),
                (7, CpuTimes { total: 8, idle: 2 })
            ]
        );
        assert_eq!(parse_stat(""), StatCpus::default());
        // Counters that would overflow are skipped rather than wrapped.
        let huge = format!("cpu {} {} 0 0\n", u64::MAX, u64::MAX);
        assert_eq!(parse_stat(&huge).all, None);
    }

    #[test]
    fn busy_percent_between_two_readings() {
        let a = CpuTimes {
            total: 1000,
            idle: 800,
        };
        let b = CpuTimes {
            total: 1200,
            idle: 950,
        };
        assert_eq!(busy_percent(a, b), Some(25.0));
        assert_eq!(busy_percent(a, a), None, "no tick passed");
        assert_eq!(busy_percent(b, a), None, "counters went backwards");
        let all_busy = CpuTimes {
            total: 1100,
            idle: 800,
        };
        assert_eq!(busy_percent(a, all_busy), Some(100.0));
    }

    const MEMINFO: &str = "\
MemTotal:        3884328 kB
MemFree:          178012 kB
MemAvailable:    2790808 kB
Buffers:          142196 kB
Cached:          2382920 kB
SwapCached:         1024 kB
SwapTotal:        102396 kB
SwapFree:          60000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 3884328 * 1024);
        assert_eq!(m.available, 2790808 * 1024);
        assert_eq!(m.swap_total, 102396 * 1024);
        assert_eq!(m.swap_free, 60000 * 1024);
    }

    /// Before Linux 3.14 there is no `MemAvailable`: free + buffers + cached stands in. Without
    /// `MemTotal` there is nothing to show.
    #[test]
    fn meminfo_without_mem_available_or_total() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let m = parse_meminfo(old).unwrap();
        assert_eq!(m.available, 400 * 1024);
        assert_eq!((m.swap_total, m.swap_free), (0, 0));
        assert_eq!(parse_meminfo("MemFree: 100 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
        // Garbage lines around a good one; available never above total.
        let odd = "nonsense\nMemTotal: 10 kB\nMemAvailable: lots kB\nMemFree: 99 kB\nX: 1 MB\n";
        assert_eq!(parse_meminfo(odd).unwrap().available, 10 * 1024);
    }

    #[test]
    fn uptime_and_loadavg() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735.47));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);
        assert_eq!(parse_uptime("NaN 0"), None);
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/389 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("0.52 0.58"), None);
        assert_eq!(parse_loadavg("a b c"), None);
    }

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,relatime 0 0
udev /dev devtmpfs rw,nosuid,relatime,size=1800000k,nr_inodes=450000,mode=755 0 0
devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=000 0 0
tmpfs /run tmpfs rw,nosuid,nodev,noexec,relatime,size=388436k,mode=755 0 0
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
/dev/mmcblk0p1 /boot/firmware vfat ro,relatime,fmask=0022,dmask=0022,codepage=437 0 0
/dev/sda1 /media/pi/My\\040Disk ext4 rw,nosuid,nodev,relatime 0 0
/dev/loop0 /snap/core/123 squashfs ro,nodev,relatime 0 0
gvfsd-fuse /run/user/1000/gvfs fuse.gvfsd-fuse rw,nosuid,nodev,relatime 0 0
nas:/export /mnt/nas nfs4 rw,relatime,vers=4.2 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw,relatime 0 0
";

    #[test]
    fn mounts_keep_real_filesystems() {
        let m = parse_mounts(MOUNTS);
        let points: Vec<&str> = m.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(
            points,
            [
                "/",
                "/boot/firmware",
                "/media/pi/My Disk",
                "/mnt/nas",
                "/var/lib/docker/overlay2/abc/merged"
            ]
        );
        assert_eq!(m[0].device, "/dev/mmcblk0p2");
        assert_eq!(m[0].fstype, "ext4");
        assert!(!m[0].read_only);
        assert!(m[1].read_only, "ro among the options");
    }

    /// A mount point mounted over appears once (the last mount is the visible one); short lines
    /// are skipped.
    #[test]
    fn mounts_survive_odd_lines() {
        let m = parse_mounts(
            "/dev/sda1 /data ext4 rw 0 0\n\
             short line\n\
             \n\
             /dev/sdb1 /data xfs rw,noatime 0 0\n\
             /dev/root / ext4 rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].device, "/dev/sdb1");
        assert_eq!(m[0].fstype, "xfs");
        assert_eq!(m[1].mount_point, "/");
        assert!(parse_mounts("").is_empty());
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape_octal("a\\040b\\011c\\012d\\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_octal("not\\999octal"), "not\\999octal");
        assert_eq!(unescape_octal("\\"), "\\");
        // Above one byte: kept as written.
        assert_eq!(unescape_octal("\\777"), "\\777");
    }

    #[test]
    fn temperatures_in_degrees() {
        assert_eq!(parse_millidegrees("48686\n"), Some(48.686));
        assert_eq!(parse_millidegrees("-5000"), Some(-5.0));
        assert_eq!(parse_millidegrees(""), None);
        assert_eq!(parse_millidegrees("N/A"), None);
        assert_eq!(parse_millidegrees("-274000"), None);
        assert_eq!(parse_millidegrees("2147483647"), None);
    }

    /// `0x50005`, the value of a Pi on a weak power supply: under-voltage and throttling now and
    /// since boot.
    #[test]
    fn a_pi_throttled_value_decodes_into_named_flags() {
        assert_eq!(parse_throttled("50005\n"), Some(0x50005));
        assert_eq!(parse_throttled("throttled=0x50005"), Some(0x50005));
        assert_eq!(parse_throttled("0X0"), Some(0));
        let flags = throttle_flags(0x50005);
        let named: Vec<(&str, bool, bool)> = flags
            .iter()
            .map(|f| (f.name, f.now, f.since_boot))
            .collect();
        assert_eq!(
            named,
            [
                ("under_voltage", true, true),
                ("arm_frequency_capped", false, false),
                ("throttled", true, true),
                ("soft_temperature_limit", false, false),
            ]
        );
        // Only in the past: 0x80000, a soft temperature limit once since boot.
        let past = throttle_flags(0x80000);
        assert!(past.iter().all(|f| !f.now));
        assert_eq!(
            past.iter()
                .filter(|f| f.since_boot)
                .map(|f| f.name)
                .collect::<Vec<_>>(),
            ["soft_temperature_limit"]
        );
        assert!(throttle_flags(0).iter().all(|f| !f.now && !f.since_boot));
    }

    #[test]
    fn throttled_garbage_is_none() {
        assert_eq!(parse_throttled(""), None);
        assert_eq!(parse_throttled("0x"), None);
        assert_eq!(parse_throttled("zz"), None);
        assert_eq!(parse_throttled("123456789"), None);
        assert_eq!(parse_throttled("-1"), None);
    }

    #[test]
    fn alarms_and_sysfs_text() {
        assert_eq!(parse_alarm("0\n"), Some(false));
        assert_eq!(parse_alarm("1\n"), Some(true));
        assert_eq!(parse_alarm("2"), None);
        assert_eq!(parse_alarm(""), None);
        assert_eq!(
            sysfs_text("Raspberry Pi 4 Model B Rev 1.4\0").as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(sysfs_text(" up\n").as_deref(), Some("up"));
        assert_eq!(sysfs_text("\n"), None);
    }

    #[test]
    fn pseudo_filesystems() {
        for p in ["proc", "tmpfs", "cgroup2", "fuse.gvfsd-fuse", "squashfs"] {
            assert!(is_pseudo_fs(p), "{p}");
        }
        for r in [
            "ext4",
            "vfat",
            "btrfs",
            "nfs4",
            "overlay",
            "fuseblk",
            "fuse.sshfs",
        ] {
            assert!(!is_pseudo_fs(r), "{r}");
        }
    }
}
