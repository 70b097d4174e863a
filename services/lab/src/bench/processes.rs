//! The processes: CPU and memory from /proc.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use indicatif::ProgressBar;
use shop::registry;

use super::options::*;

/// A process group measured together (one service, or all of RabbitMQ's or Postgres's).
#[derive(Debug, Clone)]
pub(super) struct Measured {
    pub(super) name: String,
    pub(super) pids: Vec<u32>,
}

/// CPU ticks used so far by each process (utime + stime).
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    ticks_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of a `/proc/<pid>/stat` line.
fn ticks_of_stat(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses; the fields after its last `)` are fixed.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A line of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak).
pub(super) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

pub(super) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

pub(super) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// RabbitMQ's and Postgres's processes, by command name.
pub(super) fn infrastructure() -> Vec<Measured> {
    let pids = all_pids();
    let named = |names: &[&str]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|pid| comm(*pid).is_some_and(|c| names.contains(&c.as_str())))
            .collect()
    };
    vec![
        Measured {
            name: "rabbitmq".to_owned(),
            pids: named(&["beam.smp", "erl_child_setup", "epmd", "inet_gethost"]),
        },
        Measured {
            name: "postgres".to_owned(),
            pids: named(&["postgres"]),
        },
    ]
}

/// A running shop's service processes: `shop service <name>` or a service's own binary.
pub(super) fn find_services() -> Vec<Measured> {
    let pids = all_pids();
    registry::names()
        .filter(|name| measured(name))
        .map(|name| Measured {
            name: name.to_owned(),
            pids: pids
                .iter()
                .copied()
                .filter(|pid| {
                    cmdline(*pid).is_some_and(|args| {
                        let exe = args.first().map(|a| a.rsplit('/').next().unwrap_or(a));
                        exe == Some(name)
                            || (exe == Some("shop")
                                && args.get(1).map(String::as_str) == Some("service")
                                && args.get(2).map(String::as_str) == Some(name))
                    })
                })
                .collect(),
        })
        .collect()
}

pub(super) fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use of each group between [`Usage::start`] and [`Usage::finish`].
pub(super) struct Usage {
    pub(super) groups: Vec<Measured>,
    pub(super) started: Instant,
    pub(super) ticks: Vec<HashMap<u32, u64>>,
    pub(super) machine: Vec<u64>,
}

/// The whole machine's time over the window, in % of all its cores (`busy` = 100 − idle).
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct MachineCpu {
    pub(super) busy_pct: f64,
    pub(super) user_pct: f64,
    pub(super) system_pct: f64,
    pub(super) softirq_pct: f64,
    pub(super) iowait_pct: f64,
    pub(super) steal_pct: f64,
}

/// The `cpu` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal, …
pub(super) fn machine_ticks() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct ProcessFigures {
    /// Of one core (a group of processes may exceed 100).
    pub(super) cpu_pct: f64,
    pub(super) rss_mib: f64,
    /// The process's high-water mark (for a group of several: its RSS now).
    pub(super) peak_rss_mib: f64,
}

impl Usage {
    pub(super) fn start(groups: Vec<Measured>) -> Self {
        let ticks = groups
            .iter()
            .map(|g| {
                g.pids
                    .iter()
                    .filter_map(|pid| Some((*pid, cpu_ticks(*pid)?)))
                    .collect()
            })
            .collect();
        Self {
            groups,
            started: Instant::now(),
            ticks,
            machine: machine_ticks(),
        }
    }

    pub(super) fn machine(&self) -> MachineCpu {
        let now = machine_ticks();
        let delta: Vec<f64> = now
            .iter()
            .zip(&self.machine)
            .map(|(after, before)| after.saturating_sub(*before) as f64)
            .collect();
        let total: f64 = delta.iter().sum::<f64>().max(1.0);
        let pct = |i: usize| round1(delta.get(i).copied().unwrap_or(0.0) / total * 100.0);
        MachineCpu {
            busy_pct: round1(100.0 - pct(3)),
            user_pct: round1(pct(0) + pct(1)),
            system_pct: pct(2),
            softirq_pct: round1(pct(5) + pct(6)),
            iowait_pct: pct(4),
            steal_pct: pct(7),
        }
    }

    /// Per group: CPU % (100 = one core) over the window, memory now and at its peak.
    /// `born` are groups found again now: a process that started during the window (a new
    /// database connection's backend) counts all its time.
    pub(super) fn finish(&self, born: &[Measured]) -> BTreeMap<String, ProcessFigures> {
        let hz = clock_ticks_per_second();
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        self.groups
            .iter()
            .zip(&self.ticks)
            .map(|(group, before)| {
                let mut pids = group.pids.clone();
                for later in born.iter().filter(|b| b.name == group.name) {
                    for pid in &later.pids {
                        if !pids.contains(pid) {
                            pids.push(*pid);
                        }
                    }
                }
                let group = Measured {
                    name: group.name.clone(),
                    pids,
                };
                let used: u64 = group
                    .pids
                    .iter()
                    .filter_map(|pid| {
                        Some(cpu_ticks(*pid)?.saturating_sub(*before.get(pid).unwrap_or(&0)))
                    })
                    .sum();
                let kib = |field| -> Vec<u64> {
                    group
                        .pids
                        .iter()
                        .filter_map(|pid| status_kib(*pid, field))
                        .collect()
                };
                // Shared memory (Postgres's buffers) is in every process's RSS: count it once.
                let private: u64 =
                    kib("RssAnon").iter().sum::<u64>() + kib("RssFile").iter().sum::<u64>();
                let rss = private + kib("RssShmem").into_iter().max().unwrap_or(0);
                let peak = match kib("VmHWM").as_slice() {
                    [one] => *one,
                    _ => rss,
                };
                let figures = ProcessFigures {
                    cpu_pct: round1(used as f64 / hz / seconds * 100.0),
                    rss_mib: round1(rss as f64 / 1024.0),
                    peak_rss_mib: round1(peak as f64 / 1024.0),
                };
                (group.name.clone(), figures)
            })
            .collect()
    }
}

/// A line of progress on stderr, above the bar (which indicatif hides when stderr is not a
/// terminal, and its `println` with it).
pub(super) fn note(progress: &ProgressBar, line: impl AsRef<str>) {
    if progress.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        progress.println(line);
    }
}

pub(super) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "4242 (tokio (rt) worker 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 25 0 0 \
                    20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(ticks_of_stat(stat), Some(17 + 25));
        assert_eq!(ticks_of_stat("4242 (no closing paren S 1"), None);
    }

    #[test]
    fn this_process_has_cpu_ticks_and_memory() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
    }
}
