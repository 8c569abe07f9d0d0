//! The machine's load, as a `resource_report` tells the hub: CPU %, RAM used and total, and
//! VRAM used and total where the machine reports it cheaply.
//!
//! This module owns the rules: how `/proc/stat`, `/proc/meminfo` and the amdgpu driver's
//! sysfs files are read ([`parse_proc_stat`], [`parse_meminfo`], [`parse_vram`]), how CPU %
//! follows from two samples ([`cpu_percent`]) and which frame two samples make
//! ([`report`]). [`sample`] reads the files (blocking file I/O: callers run it off the event
//! loop). It does not decide when to sample or whether a report may be sent: the
//! ResourceActor (`actors/resources.rs`) does.
//!
//! Platforms: Linux reads `/proc` and `/sys`; on other systems [`sample`] returns an empty
//! [`Sample`] (no frame is then sent). VRAM comes only from amdgpu's
//! `mem_info_vram_used`/`mem_info_vram_total`: NVIDIA cards report it only through NVML or
//! `nvidia-smi`, a library load or a process per report, which is not cheap.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::Outgoing;

/// Aggregate CPU time of all CPUs (the `cpu` line of `/proc/stat`), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time not idle: user, nice, system, irq, softirq, steal.
    pub busy: u64,
    /// All of it, idle and iowait included.
    pub total: u64,
}

/// RAM in bytes: `used` is what is not available to new programs (total − MemAvailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    pub total: u64,
}

/// One reading of the machine; each part is absent when the platform does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu: Option<CpuTimes>,
    pub memory: Option<Memory>,
    /// Video memory of every card that reports it, summed.
    pub vram: Option<Memory>,
    /// When it was taken: milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
}

impl Sample {
    /// Whether it holds anything to report.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.vram.is_none()
    }
}

/// The `cpu` line of `/proc/stat`: `cpu  user nice system idle iowait irq softirq steal
/// guest guest_nice` (guest time is already counted in user and nice).
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo` (kB there, bytes here). Kernels older
/// than 3.14 have no `MemAvailable`: MemFree + Buffers + Cached stands in for it.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(':'))
        })?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable").or_else(|| {
        Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0))
    })?;
    (total > 0).then(|| Memory {
        used: total.saturating_sub(available),
        total,
    })
}

/// One card's `mem_info_vram_used` and `mem_info_vram_total` (bytes, one number each).
pub fn parse_vram(used: &str, total: &str) -> Option<Memory> {
    let used: u64 = used.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    (total > 0).then_some(Memory {
        used: used.min(total),
        total,
    })
}

/// CPU use between two samples, in percent of all CPUs (0–100, one decimal); `None` when no
/// time passed between them or the counters went back.
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    if total == 0 {
        return None;
    }
    let percent = (busy.min(total) as f64) * 100.0 / (total as f64);
    Some((percent * 10.0).round() / 10.0)
}

/// The frame for sample `now`, with CPU % over the time since `before` (left out without
/// it); `None` when `now` holds nothing to report.
pub fn report(before: Option<&Sample>, now: &Sample) -> Option<Outgoing> {
    if now.is_empty() {
        return None;
    }
    let cpu_percent = match (before.and_then(|b| b.cpu), now.cpu) {
        (Some(b), Some(n)) => cpu_percent(b, n),
        _ => None,
    };
    Some(Outgoing::ResourceReport {
        cpu_percent,
        ram_used_bytes: now.memory.map(|m| m.used),
        ram_total_bytes: now.memory.map(|m| m.total),
        vram_used_bytes: now.vram.map(|m| m.used),
        vram_total_bytes: now.vram.map(|m| m.total),
        timestamp: now.taken_at_ms,
    })
}

/// Reads the machine now. Blocking file I/O: run it on the blocking pool.
pub fn sample() -> Sample {
    sample_from(Path::new("/proc"), Path::new("/sys/class/drm"))
}

/// [`sample`] with other roots for `/proc` and `/sys/class/drm` (for tests).
#[cfg(target_os = "linux")]
pub fn sample_from(proc: &Path, drm: &Path) -> Sample {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    Sample {
        cpu: read(proc.join("stat")).as_deref().and_then(parse_proc_stat),
        memory: read(proc.join("meminfo"))
            .as_deref()
            .and_then(parse_meminfo),
        vram: vram(drm),
        taken_at_ms: now_ms(),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn sample_from(_: &Path, _: &Path) -> Sample {
    Sample {
        taken_at_ms: now_ms(),
        ..Sample::default()
    }
}

/// VRAM summed over every `cardN` that has amdgpu's files.
#[cfg(target_os = "linux")]
fn vram(drm: &Path) -> Option<Memory> {
    let entries = std::fs::read_dir(drm).ok()?;
    let mut sum: Option<Memory> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // card0, card1, … (not the connectors card0-DP-1 or the render nodes).
        let is_card = name
            .strip_prefix("card")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_card {
            continue;
        }
        let device = entry.path().join("device");
        let (Ok(used), Ok(total)) = (
            std::fs::read_to_string(device.join("mem_info_vram_used")),
            std::fs::read_to_string(device.join("mem_info_vram_total")),
        ) else {
            continue;
        };
        if let Some(card) = parse_vram(&used, &total) {
            let s = sum.get_or_insert(Memory { used: 0, total: 0 });
            s.used = s.used.saturating_add(card.used);
            s.total = s.total.saturating_add(card.total);
        }
    }
    sum
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  4705 356 584 3699176 23060 0 277 0 0 0\n\
                        cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n\
                        intr 114930548 113199788 3 0 5 263 0 4\n";

    #[test]
    fn proc_stat_gives_busy_and_total_ticks() {
        let t = parse_proc_stat(STAT).unwrap();
        assert_eq!(t.total, 4705 + 356 + 584 + 3699176 + 23060 + 277);
        assert_eq!(t.busy, 4705 + 356 + 584 + 277);
        // Old kernels with only four fields.
        let old = parse_proc_stat("cpu 10 0 10 80\n").unwrap();
        assert_eq!((old.busy, old.total), (20, 100));
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu a b c d\n"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn cpu_percent_is_busy_over_total_between_two_samples() {
        let a = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 125,
            total: 1100,
        };
        assert_eq!(cpu_percent(a, b), Some(25.0));
        assert_eq!(cpu_percent(a, a), None);
        // Counters that went back (another boot's sample): no figure rather than a wrong one.
        assert_eq!(cpu_percent(b, a), None);
        let third = CpuTimes {
            busy: 101,
            total: 1003,
        };
        assert_eq!(cpu_percent(a, third), Some(33.3));
    }

    #[test]
    fn meminfo_used_is_total_less_available() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1202384 kB\n\
                    MemAvailable:   10284040 kB\nBuffers:          561580 kB\nCached:  8000000 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total, 16318480 * 1024);
        assert_eq!(m.used, (16318480 - 10284040) * 1024);
        // Without MemAvailable: free + buffers + cached.
        let old =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
                .unwrap();
        assert_eq!(old.used, 600 * 1024);
        assert_eq!(parse_meminfo("MemTotalX: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn vram_files_hold_one_number_each() {
        assert_eq!(
            parse_vram("1048576\n", "8589934592\n"),
            Some(Memory {
                used: 1048576,
                total: 8589934592
            })
        );
        assert_eq!(parse_vram("x", "1"), None);
        assert_eq!(parse_vram("1", "0"), None);
    }

    #[test]
    fn a_report_leaves_out_what_is_unknown() {
        let before = Sample {
            cpu: Some(CpuTimes {
                busy: 0,
                total: 100,
            }),
            ..Sample::default()
        };
        let now = Sample {
            cpu: Some(CpuTimes {
                busy: 50,
                total: 200,
            }),
            memory: Some(Memory { used: 1, total: 2 }),
            vram: None,
            taken_at_ms: 1_707_500_000_000,
        };
        let frame = report(Some(&before), &now).unwrap();
        let text = frame.encode().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "resource_report");
        assert_eq!(v["protocol_version"], 1);
        assert_eq!(v["cpu_percent"], 50.0);
        assert_eq!(v["ram_used_bytes"], 1);
        assert_eq!(v["ram_total_bytes"], 2);
        assert_eq!(v["timestamp"], 1_707_500_000_000u64);
        assert!(v.get("vram_used_bytes").is_none() && v.get("vram_total_bytes").is_none());
        // The first sample has no CPU figure yet.
        let first: serde_json::Value =
            serde_json::from_str(&report(None, &now).unwrap().encode().unwrap()).unwrap();
        assert!(first.get("cpu_percent").is_none());
        assert_eq!(report(None, &Sample::default()), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sampling_a_fake_tree_reads_every_card() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let drm = dir.path().join("drm");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(proc.join("stat"), STAT).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemAvailable: 250 kB\n",
        )
        .unwrap();
        for (card, used, total) in [("card0", 10, 100), ("card1", 5, 50)] {
            let dev = drm.join(card).join("device");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("mem_info_vram_used"), format!("{used}\n")).unwrap();
            std::fs::write(dev.join("mem_info_vram_total"), format!("{total}\n")).unwrap();
        }
        // A connector and a card without amdgpu's files are skipped.
        std::fs::create_dir_all(drm.join("card0-DP-1/device")).unwrap();
        std::fs::create_dir_all(drm.join("card2/device")).unwrap();
        let s = sample_from(&proc, &drm);
        assert_eq!(
            s.memory,
            Some(Memory {
                used: 750 * 1024,
                total: 1000 * 1024
            })
        );
        assert_eq!(
            s.vram,
            Some(Memory {
                used: 15,
                total: 150
            })
        );
        assert!(s.cpu.is_some() && s.taken_at_ms > 0);
        // No cards at all: no VRAM.
        assert_eq!(sample_from(&proc, &dir.path().join("none")).vram, None);
        // The real machine.
        let real = sample();
        assert!(real
            .memory
            .is_some_and(|m| m.total > 0 && m.used <= m.total));
        assert!(real.cpu.is_some());
    }
}
