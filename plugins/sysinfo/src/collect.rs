//! Taking one sample of the system: reads the files under a root (`/` on a device, a fixture tree
//! in the tests), asks the kernel for each mount's usage (statvfs) and the interfaces' addresses
//! (getifaddrs), and assembles a [`Snapshot`] — the figures `GET /` shows. The only module that
//! touches `/proc`, `/sys` or a system call; the parsing is `parse`'s.
//!
//! Nothing here is an error: a file that is missing or unreadable (not a Pi, no thermal zone, a
//! confined plugin kept out of a mount) leaves its figure empty or marks it unavailable. Every
//! list is capped, so a sample's size is bounded whatever the device holds.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::parse::{self, CpuTimes, MountEntry, StatCpus, ThrottleFlag};

/// At most this much of one file is read (a `/proc/self/mounts` with thousands of container
/// mounts stays within it).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// At most this many mounts, interfaces, thermal zones and addresses per interface are shown.
pub(crate) const MAX_MOUNTS: usize = 64;
pub(crate) const MAX_INTERFACES: usize = 64;
pub(crate) const MAX_ZONES: usize = 32;
pub(crate) const MAX_ADDRESSES: usize = 32;

/// Where a Raspberry Pi's kernel exposes the firmware's throttling bits (the `raspberrypi-firmware`
/// driver's `get_throttled`): the usual path, then any device that driver is bound to.
const THROTTLED_PATH: &str = "sys/devices/platform/soc/soc:firmware/get_throttled";
const FIRMWARE_DRIVER_DIR: &str = "sys/bus/platform/drivers/raspberrypi-firmware";
/// The Pi's under-voltage sensor (`raspberrypi-hwmon`): the hwmon device named this.
const PI_HWMON_NAME: &str = "rpi_volt";

/// The current figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Snapshot {
    /// When it was taken (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// `/proc/sys/kernel/hostname`.
    pub hostname: Option<String>,
    /// Seconds since boot (`/proc/uptime`).
    pub uptime_secs: Option<f64>,
    /// 1, 5 and 15 minute load averages (`/proc/loadavg`).
    pub load: Option<[f64; 3]>,
    /// Busy shares since the previous sample.
    pub cpu: Cpu,
    /// `/proc/meminfo`; `None` when unreadable.
    pub memory: Option<Memory>,
    /// Real filesystems, in mount order.
    pub disks: Vec<Disk>,
    /// Thermal zones and the CPU's temperature.
    pub temperature: Temperature,
    /// Interfaces, by name.
    pub network: Vec<Interface>,
    /// Raspberry Pi power and throttling flags.
    pub pi: Pi,
}

/// CPU load.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct Cpu {
    /// All CPUs together, percent busy since the previous sample (`None` on the first).
    pub total_percent: Option<f64>,
    /// Each CPU that has a line in `/proc/stat` (online ones).
    pub cores: Vec<Core>,
}

/// One CPU.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Core {
    /// Its number (`cpuN`).
    pub core: usize,
    /// Percent busy since the previous sample (`None` on the first, or after it came back online).
    pub percent: Option<f64>,
}

/// Memory, in bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// `total - available`.
    pub used_bytes: u64,
    pub used_percent: f64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

/// One mounted filesystem.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Disk {
    pub mount: String,
    pub device: String,
    pub fstype: String,
    pub read_only: bool,
    /// Whether its usage could be read; when not, `error` says why and the sizes are `None`.
    pub available: bool,
    pub error: Option<String>,
    pub total_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    /// Free for an ordinary user (without the blocks reserved for root), as `df` shows.
    pub free_bytes: Option<u64>,
    /// `used / (used + free)`, as `df` computes it.
    pub used_percent: Option<f64>,
}

/// What statvfs says about a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsUsage {
    pub total: u64,
    /// Blocks in use (`total - free`, counting the reserved ones as free).
    pub used: u64,
    /// Free for an unprivileged user.
    pub avail: u64,
}

/// Temperatures.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct Temperature {
    /// The CPU's temperature in °C: the zone [`cpu_zone`] picks; `None` when there is none.
    pub celsius: Option<f64>,
    /// That zone's name.
    pub zone: Option<String>,
    /// Every thermal zone.
    pub zones: Vec<Zone>,
}

/// A thermal zone.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Zone {
    /// `thermal_zoneN`.
    pub name: String,
    /// Its `type` (`cpu-thermal`, `x86_pkg_temp`, `acpitz`, …).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `None` when its `temp` is unreadable (some drivers fail while a sensor sleeps).
    pub celsius: Option<f64>,
}

/// A network interface.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Interface {
    pub name: String,
    /// `operstate`: `up`, `down`, `unknown` (loopback and some drivers), `dormant`, …
    pub state: Option<String>,
    /// The hardware address (`address`).
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub addresses: Vec<Address>,
}

/// One address of an interface.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Address {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    pub address: String,
    /// The prefix length of its netmask.
    pub prefix: Option<u8>,
}

/// A Raspberry Pi's power and throttling flags.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct Pi {
    /// Whether the kernel exposes any of them; when not, the UI says "not available".
    pub available: bool,
    /// The device tree's model (`Raspberry Pi 4 Model B Rev 1.4`), on any device that has one.
    pub model: Option<String>,
    /// `get_throttled` as read, `0x…`.
    pub throttled: Option<String>,
    /// `get_throttled` decoded (empty when it is not exposed).
    pub flags: Vec<ThrottleFlag>,
    /// The `rpi_volt` sensor's `in0_lcrit_alarm`: under-voltage now.
    pub under_voltage_alarm: Option<bool>,
}

/// Read usage of the filesystem mounted at a path.
pub(crate) type StatFn = fn(&Path) -> io::Result<FsUsage>;
/// List every interface address: (interface name, address, prefix length).
pub(crate) type AddrsFn = fn() -> io::Result<Vec<(String, IpAddr, Option<u8>)>>;

/// Takes samples; keeps the previous CPU counters to compute load from their difference.
#[derive(Debug)]
pub(crate) struct Collector {
    root: PathBuf,
    stat: StatFn,
    addrs: AddrsFn,
    prev_cpu: Option<StatCpus>,
}

impl Collector {
    /// A collector of this system (root `/`, the real system calls).
    pub(crate) fn system() -> Collector {
        Collector::new(PathBuf::from("/"), statvfs_usage, interface_addresses)
    }

    /// A collector reading files under `root`, with these system calls (tests give fakes).
    pub(crate) fn new(root: PathBuf, stat: StatFn, addrs: AddrsFn) -> Collector {
        Collector {
            root,
            stat,
            addrs,
            prev_cpu: None,
        }
    }

    /// The file `rel` (relative to the root), at most [`MAX_FILE_BYTES`]; `None` when it cannot
    /// be read.
    fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        read_capped(&self.root.join(rel))
    }

    /// One sample, taken now (`time_ms`).
    pub(crate) fn sample(&mut self, time_ms: u64) -> Snapshot {
        Snapshot {
            time_ms,
            hostname: self
                .read("proc/sys/kernel/hostname")
                .and_then(|t| parse::sysfs_text(&t)),
            uptime_secs: self
                .read("proc/uptime")
                .and_then(|t| parse::parse_uptime(&t)),
            load: self
                .read("proc/loadavg")
                .and_then(|t| parse::parse_loadavg(&t)),
            cpu: self.cpu(),
            memory: self
                .read("proc/meminfo")
                .and_then(|t| parse::parse_meminfo(&t))
                .map(memory),
            disks: self.disks(),
            temperature: self.temperature(),
            network: self.network(),
            pi: self.pi(),
        }
    }

    fn cpu(&mut self) -> Cpu {
        let cur = self
            .read("proc/stat")
            .map(|t| parse::parse_stat(&t))
            .unwrap_or_default();
        let cpu = cpu_load(self.prev_cpu.as_ref(), &cur);
        self.prev_cpu = Some(cur);
        cpu
    }

    fn disks(&self) -> Vec<Disk> {
        let mounts = self
            .read("proc/self/mounts")
            .map(|t| parse::parse_mounts(&t))
            .unwrap_or_default();
        disk_usage(&mounts, |m| {
            (self.stat)(&self.root.join(m.trim_start_matches('/')))
        })
    }

    fn temperature(&self) -> Temperature {
        let zones: Vec<Zone> =
            numbered_entries(&self.root.join("sys/class/thermal"), "thermal_zone")
                .into_iter()
                .take(MAX_ZONES)
                .map(|(name, dir)| Zone {
                    kind: read_capped(&dir.join("type")).and_then(|t| parse::sysfs_text(&t)),
                    celsius: read_capped(&dir.join("temp"))
                        .and_then(|t| parse::parse_millidegrees(&t))
                        .map(round1),
                    name,
                })
                .collect();
        let cpu = cpu_zone(&zones).map(|i| &zones[i]);
        Temperature {
            celsius: cpu.and_then(|z| z.celsius),
            zone: cpu.map(|z| z.name.clone()),
            zones,
        }
    }

    fn network(&self) -> Vec<Interface> {
        let net = self.root.join("sys/class/net");
        let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
        for name in dir_names(&net) {
            let dir = net.join(&name);
            let text = |f: &str| read_capped(&dir.join(f)).and_then(|t| parse::sysfs_text(&t));
            by_name.insert(
                name.clone(),
                Interface {
                    state: text("operstate"),
                    mac: text("address"),
                    mtu: text("mtu").and_then(|m| m.parse().ok()),
                    name,
                    addresses: Vec::new(),
                },
            );
        }
        // Addresses: a name sysfs does not list (an IPv4 alias label such as `eth0:1`) gets an
        // entry of its own.
        for (name, ip, prefix) in (self.addrs)().unwrap_or_default() {
            let entry = by_name.entry(name.clone()).or_insert_with(|| Interface {
                name,
                state: None,
                mac: None,
                mtu: None,
                addresses: Vec::new(),
            });
            if entry.addresses.len() < MAX_ADDRESSES {
                entry.addresses.push(Address {
                    family: if ip.is_ipv4() { "ipv4" } else { "ipv6" },
                    address: ip.to_string(),
                    prefix,
                });
            }
        }
        by_name
            .into_values()
            .take(MAX_INTERFACES)
            .map(|mut i| {
                i.addresses.sort();
                i
            })
            .collect()
    }

    fn pi(&self) -> Pi {
        let model = self
            .read("proc/device-tree/model")
            .or_else(|| self.read("sys/firmware/devicetree/base/model"))
            .and_then(|t| parse::sysfs_text(&t));
        let throttled = self.read(THROTTLED_PATH).or_else(|| {
            dir_names(&self.root.join(FIRMWARE_DRIVER_DIR))
                .into_iter()
                .find_map(|d| {
                    self.read(Path::new(FIRMWARE_DRIVER_DIR).join(d).join("get_throttled"))
                })
        });
        let alarm = numbered_entries(&self.root.join("sys/class/hwmon"), "hwmon")
            .into_iter()
            .find(|(_, dir)| {
                read_capped(&dir.join("name"))
                    .and_then(|t| parse::sysfs_text(&t))
                    .as_deref()
                    == Some(PI_HWMON_NAME)
            })
            .and_then(|(_, dir)| read_capped(&dir.join("in0_lcrit_alarm")));
        pi_status(model, throttled.as_deref(), alarm.as_deref())
    }
}

/// Round to one decimal (what the page shows; keeps the JSON short).
pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// CPU load from two readings of `/proc/stat` (`prev` is `None` at the first sample): cores are
/// matched by number, so a CPU that went offline or came back has no figure this time.
pub(crate) fn cpu_load(prev: Option<&StatCpus>, cur: &StatCpus) -> Cpu {
    let before = |n: usize| -> Option<CpuTimes> {
        prev?.cores.iter().find(|(m, _)| *m == n).map(|(_, t)| *t)
    };
    Cpu {
        total_percent: prev
            .and_then(|p| p.all)
            .zip(cur.all)
            .and_then(|(a, b)| parse::busy_percent(a, b))
            .map(round1),
        cores: cur
            .cores
            .iter()
            .map(|&(core, t)| Core {
                core,
                percent: before(core)
                    .and_then(|b| parse::busy_percent(b, t))
                    .map(round1),
            })
            .collect(),
    }
}

fn memory(m: parse::MemInfo) -> Memory {
    let used = m.total - m.available;
    Memory {
        total_bytes: m.total,
        available_bytes: m.available,
        used_bytes: used,
        used_percent: if m.total == 0 {
            0.0
        } else {
            round1(used as f64 * 100.0 / m.total as f64)
        },
        swap_total_bytes: m.swap_total,
        swap_used_bytes: m.swap_total - m.swap_free,
    }
}

/// The usage of each mount (at most [`MAX_MOUNTS`]) as `stat` reports it; a mount it cannot read
/// (a confined plugin kept out of it, a dead network server) is listed as unavailable with the
/// reason.
pub(crate) fn disk_usage(
    mounts: &[MountEntry],
    stat: impl Fn(&str) -> io::Result<FsUsage>,
) -> Vec<Disk> {
    mounts
        .iter()
        .take(MAX_MOUNTS)
        .map(|m| {
            let usage = stat(&m.mount_point);
            let ok = usage.as_ref().ok();
            Disk {
                mount: m.mount_point.clone(),
                device: m.device.clone(),
                fstype: m.fstype.clone(),
                read_only: m.read_only,
                available: ok.is_some(),
                error: usage.as_ref().err().map(describe_error),
                total_bytes: ok.map(|u| u.total),
                used_bytes: ok.map(|u| u.used),
                free_bytes: ok.map(|u| u.avail),
                used_percent: ok.and_then(|u| {
                    let denom = u.used.checked_add(u.avail)?;
                    (denom > 0).then(|| round1(u.used as f64 * 100.0 / denom as f64))
                }),
            }
        })
        .collect()
}

/// An I/O error in a few words a person reads (`permission denied`), without the errno number.
fn describe_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "not found".into(),
        _ => {
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_lowercase()
        }
    }
}

/// Which zone is the CPU's: the first whose type names the CPU or SoC (`cpu-thermal` on a Pi,
/// `x86_pkg_temp`, `soc_thermal`), else the first with a reading.
pub(crate) fn cpu_zone(zones: &[Zone]) -> Option<usize> {
    let cpuish = |z: &Zone| {
        z.kind.as_deref().is_some_and(|k| {
            let k = k.to_ascii_lowercase();
            ["cpu", "soc", "x86_pkg", "package"]
                .iter()
                .any(|w| k.contains(w))
        })
    };
    zones
        .iter()
        .position(|z| z.celsius.is_some() && cpuish(z))
        .or_else(|| zones.iter().position(|z| z.celsius.is_some()))
}

/// The Pi section from what was read (`None`: the file is missing or unreadable).
pub(crate) fn pi_status(model: Option<String>, throttled: Option<&str>, alarm: Option<&str>) -> Pi {
    let raw = throttled.and_then(parse::parse_throttled);
    let under_voltage_alarm = alarm.and_then(parse::parse_alarm);
    Pi {
        available: raw.is_some() || under_voltage_alarm.is_some(),
        model,
        throttled: raw.map(|r| format!("{r:#x}")),
        flags: raw.map(parse::throttle_flags).unwrap_or_default(),
        under_voltage_alarm,
    }
}

/// The file at `path`, at most [`MAX_FILE_BYTES`], as text (invalid UTF-8 replaced); `None` when
/// it cannot be read.
fn read_capped(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The names in `dir`, sorted; empty when it cannot be read.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The entries `<prefix>N` of `dir` as (name, path), by N.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(u64, String)> = dir_names(dir)
        .into_iter()
        .filter_map(|n| {
            let k = n.strip_prefix(prefix)?.parse().ok()?;
            Some((k, n))
        })
        .collect();
    v.sort();
    v.into_iter()
        .map(|(_, n)| (n.clone(), dir.join(n)))
        .collect()
}

/// statvfs(3) of `path`.
// The counts are `unsigned long`: u64 on 64-bit targets (where `u64::from` is a no-op), u32 on
// armv7.
#[allow(clippy::useless_conversion)]
fn statvfs_usage(path: &Path) -> io::Result<FsUsage> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = u64::from(s.fragment_size());
    let bytes = |blocks: u64| blocks.saturating_mul(frag);
    let (blocks, free, avail) = (
        u64::from(s.blocks()),
        u64::from(s.blocks_free()),
        u64::from(s.blocks_available()),
    );
    Ok(FsUsage {
        total: bytes(blocks),
        used: bytes(blocks.saturating_sub(free)),
        avail: bytes(avail),
    })
}

/// getifaddrs(3): every IPv4 and IPv6 address with its interface and prefix length.
fn interface_addresses() -> io::Result<Vec<(String, IpAddr, Option<u8>)>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(addr) = a.address else { continue };
        let mask = a.netmask;
        if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = mask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                .and_then(|p| u8::try_from(p).ok());
            out.push((a.interface_name, IpAddr::V4(v4.ip()), prefix));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let prefix = mask
                .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()))
                .and_then(|p| u8::try_from(p).ok());
            out.push((a.interface_name, IpAddr::V6(v6.ip()), prefix));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A fixture tree: a fresh temp dir removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let d = std::env::temp_dir().join(format!("sysinfo-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Tree(d)
        }

        fn file(&self, rel: &str, text: &str) -> &Tree {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_stat(_: &Path) -> io::Result<FsUsage> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }

    fn no_addrs() -> io::Result<Vec<(String, IpAddr, Option<u8>)>> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }

    fn fake_stat(p: &Path) -> io::Result<FsUsage> {
        if p.ends_with("secret") {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(FsUsage {
            total: 1000,
            used: 250,
            avail: 700,
        })
    }

    fn fake_addrs() -> io::Result<Vec<(String, IpAddr, Option<u8>)>> {
        Ok(vec![
            ("lo".into(), IpAddr::V6(Ipv6Addr::LOCALHOST), Some(128)),
            ("lo".into(), IpAddr::V4(Ipv4Addr::LOCALHOST), Some(8)),
            (
                "eth0:1".into(),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                Some(24),
            ),
        ])
    }

    /// A tree with nothing in it: every figure is empty or unavailable, nothing fails.
    #[test]
    fn missing_files_give_empty_figures() {
        let t = Tree::new("empty");
        let mut c = Collector::new(t.0.clone(), no_stat, no_addrs);
        let s = c.sample(1);
        assert_eq!(s.time_ms, 1);
        assert_eq!(s.hostname, None);
        assert_eq!(s.uptime_secs, None);
        assert_eq!(s.cpu, Cpu::default());
        assert_eq!(s.memory, None);
        assert!(s.disks.is_empty());
        assert_eq!(s.temperature, Temperature::default());
        assert!(s.network.is_empty());
        assert_eq!(s.pi, Pi::default());
        assert!(!s.pi.available);
    }

    /// A Pi 4 as its kernel shows it: figures from every file, CPU load from the second sample,
    /// the throttled flags decoded, an unreadable mount marked unavailable.
    #[test]
    fn a_pi_tree_gives_every_figure() {
        let t = Tree::new("pi");
        t.file("proc/sys/kernel/hostname", "toru-pi\n")
            .file("proc/uptime", "1234.5 4000.0\n")
            .file("proc/loadavg", "0.10 0.20 0.30 1/200 999\n")
            .file(
                "proc/stat",
                "cpu 100 0 0 300\ncpu0 50 0 0 150\ncpu1 50 0 0 150\n",
            )
            .file("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
            .file(
                "proc/self/mounts",
                "/dev/root / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /secret ext4 ro 0 0\n",
            )
            .file("proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\0")
            .file("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
            .file("sys/class/thermal/thermal_zone0/temp", "51540\n")
            .file("sys/class/thermal/thermal_zone1/type", "broken\n")
            .file("sys/class/thermal/cooling_device0/type", "fan\n")
            .file("sys/class/net/eth0/operstate", "up\n")
            .file("sys/class/net/eth0/address", "dc:a6:32:00:00:01\n")
            .file("sys/class/net/eth0/mtu", "1500\n")
            .file("sys/class/net/lo/operstate", "unknown\n")
            .file(THROTTLED_PATH, "50005\n")
            .file("sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
            .file("sys/class/hwmon/hwmon1/name", "rpi_volt\n")
            .file("sys/class/hwmon/hwmon1/in0_lcrit_alarm", "1\n");
        let mut c = Collector::new(t.0.clone(), fake_stat, fake_addrs);
        let first = c.sample(1);
        assert_eq!(first.hostname.as_deref(), Some("toru-pi"));
        assert_eq!(first.uptime_secs, Some(1234.5));
        assert_eq!(first.load, Some([0.1, 0.2, 0.3]));
        assert_eq!(
            first.cpu.total_percent, None,
            "no load before a second sample"
        );
        assert_eq!(first.cpu.cores.len(), 2);
        let m = first.memory.as_ref().unwrap();
        assert_eq!(
            (m.total_bytes, m.used_bytes, m.used_percent),
            (1024000, 768000, 75.0)
        );

        assert_eq!(first.disks.len(), 2);
        assert_eq!(first.disks[0].mount, "/");
        assert!(first.disks[0].available);
        assert_eq!(first.disks[0].used_percent, Some(26.3));
        assert_eq!(first.disks[1].mount, "/secret");
        assert!(!first.disks[1].available);
        assert_eq!(first.disks[1].error.as_deref(), Some("permission denied"));
        assert_eq!(first.disks[1].total_bytes, None);

        assert_eq!(first.temperature.celsius, Some(51.5));
        assert_eq!(first.temperature.zone.as_deref(), Some("thermal_zone0"));
        assert_eq!(first.temperature.zones.len(), 2);
        assert_eq!(first.temperature.zones[1].celsius, None);

        let names: Vec<&str> = first.network.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth0:1", "lo"]);
        assert_eq!(first.network[0].mac.as_deref(), Some("dc:a6:32:00:00:01"));
        assert_eq!(first.network[0].mtu, Some(1500));
        let lo = &first.network[2];
        assert_eq!(lo.state.as_deref(), Some("unknown"));
        assert_eq!(
            lo.addresses,
            [
                Address {
                    family: "ipv4",
                    address: "127.0.0.1".into(),
                    prefix: Some(8)
                },
                Address {
                    family: "ipv6",
                    address: "::1".into(),
                    prefix: Some(128)
                },
            ]
        );

        assert!(first.pi.available);
        assert_eq!(
            first.pi.model.as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(first.pi.throttled.as_deref(), Some("0x50005"));
        assert_eq!(first.pi.under_voltage_alarm, Some(true));
        assert!(first.pi.flags[0].now && first.pi.flags[0].name == "under_voltage");

        t.file(
            "proc/stat",
            "cpu 150 0 0 350\ncpu0 90 0 0 160\ncpu1 60 0 0 190\n",
        );
        let second = c.sample(2);
        assert_eq!(second.cpu.total_percent, Some(50.0));
        let per_core: Vec<Option<f64>> = second.cpu.cores.iter().map(|c| c.percent).collect();
        assert_eq!(per_core, [Some(80.0), Some(20.0)]);
    }

    /// The throttled file of a Pi whose firmware node is elsewhere (found through the driver).
    #[test]
    fn throttled_found_through_the_firmware_driver() {
        let t = Tree::new("fw");
        t.file(
            &format!("{FIRMWARE_DRIVER_DIR}/soc:firmware/get_throttled"),
            "0\n",
        );
        let mut c = Collector::new(t.0.clone(), no_stat, no_addrs);
        let pi = c.sample(1).pi;
        assert!(pi.available);
        assert_eq!(pi.throttled.as_deref(), Some("0x0"));
        assert!(pi.flags.iter().all(|f| !f.now && !f.since_boot));
        assert_eq!(pi.under_voltage_alarm, None);
    }

    #[test]
    fn pi_status_without_files_is_not_available() {
        let pi = pi_status(None, None, None);
        assert!(!pi.available);
        assert!(pi.flags.is_empty());
        // Garbage in either file counts as absent.
        assert!(!pi_status(None, Some("garbage"), Some("x")).available);
        // The alarm alone is enough.
        let only_alarm = pi_status(None, None, Some("0\n"));
        assert!(only_alarm.available);
        assert_eq!(only_alarm.under_voltage_alarm, Some(false));
    }

    #[test]
    fn the_cpu_zone_is_the_one_named_so() {
        let z = |name: &str, kind: Option<&str>, c: Option<f64>| Zone {
            name: name.into(),
            kind: kind.map(Into::into),
            celsius: c,
        };
        let zones = [
            z("thermal_zone0", Some("acpitz"), Some(30.0)),
            z("thermal_zone1", Some("x86_pkg_temp"), Some(55.0)),
        ];
        assert_eq!(cpu_zone(&zones), Some(1));
        let no_cpu = [z("a", None, None), z("b", Some("acpitz"), Some(30.0))];
        assert_eq!(cpu_zone(&no_cpu), Some(1));
        assert_eq!(cpu_zone(&[z("a", Some("cpu-thermal"), None)]), None);
        assert_eq!(cpu_zone(&[]), None);
    }

    /// A core that appears (came online) has no figure until the next sample.
    #[test]
    fn cores_are_matched_by_number() {
        let prev = parse::parse_stat("cpu 10 0 0 10\ncpu0 10 0 0 10\n");
        let cur = parse::parse_stat("cpu 20 0 0 20\ncpu0 15 0 0 15\ncpu1 5 0 0 5\n");
        let cpu = cpu_load(Some(&prev), &cur);
        assert_eq!(cpu.total_percent, Some(50.0));
        assert_eq!(cpu.cores[0].percent, Some(50.0));
        assert_eq!(cpu.cores[1].percent, None);
    }

    /// The real system calls on this machine: `/` has a size; loopback has an address.
    #[test]
    fn the_system_calls_work_here() {
        let root = statvfs_usage(Path::new("/")).unwrap();
        assert!(root.total > 0);
        let addrs = interface_addresses().unwrap();
        assert!(addrs.iter().any(|(_, ip, _)| ip.is_loopback()), "{addrs:?}");
    }
}
