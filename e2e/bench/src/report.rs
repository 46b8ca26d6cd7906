//! Results: HDR latency summaries, the facts of the machine and run that make a figure
//! comparable (cores, load average, git commit), the JSON line on stdout (and optionally
//! appended to a file) and the human summary on stderr.

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::procfs;

/// A latency histogram in microseconds, 1 µs to 100 s at 3 significant figures.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

/// Record `us` microseconds, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 100_000_000));
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// Summarise `h` (microseconds).
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                count: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            };
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    /// `p50 0.41 ms, p99 1.9 ms, p99.9 4.0 ms, max 7.1 ms`
    pub fn human(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// The facts a figure is read against.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// Seconds since the Unix epoch when the scenario started.
    pub started_unix: u64,
    pub nproc: usize,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// `git describe --always --dirty` of the working directory (the node's source).
    pub git_commit: String,
    pub kernel: String,
    /// `net.core.somaxconn`: the cap on the node's accept queue, which decides whether a
    /// reconnect storm's connects wait in the queue or are dropped and retried after 1 s
    /// (docs/operations.md).
    pub somaxconn: Option<u32>,
    pub urls: Vec<String>,
    pub node_pids: Vec<u32>,
    pub label: String,
}

impl Facts {
    /// Facts at the start of a run.
    pub fn gather(urls: &[String], node_pids: &[u32], label: &str) -> Self {
        let git = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_start: procfs::loadavg(),
            loadavg_end: None,
            git_commit: git,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            somaxconn: std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            urls: urls.to_vec(),
            node_pids: node_pids.to_vec(),
            label: label.to_owned(),
        }
    }
}

/// The node processes on this machine, read for memory and CPU.
#[derive(Debug, Clone, Default)]
pub struct NodeProbe {
    pub pids: Vec<u32>,
}

impl NodeProbe {
    /// Summed resident memory of the node processes (None when none can be read).
    pub fn rss(&self) -> Option<u64> {
        let v: Vec<u64> = self
            .pids
            .iter()
            .filter_map(|p| procfs::rss_bytes(*p))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    /// Summed CPU seconds of the node processes.
    pub fn cpu(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .pids
            .iter()
            .filter_map(|p| procfs::cpu_seconds(*p))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
}

/// CPU use over an interval: cores busy in the node(s) and in this tool.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    pub node_cores: Option<f64>,
    pub bench_cores: Option<f64>,
}

/// Measures [`CpuUse`] from a start point.
pub struct CpuMeter {
    at: std::time::Instant,
    node: Option<f64>,
    me: Option<f64>,
}

impl CpuMeter {
    pub fn start(probe: &NodeProbe) -> Self {
        Self {
            at: std::time::Instant::now(),
            node: probe.cpu(),
            me: procfs::self_cpu_seconds(),
        }
    }

    pub fn read(&self, probe: &NodeProbe) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let per = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
        CpuUse {
            node_cores: per(self.node, probe.cpu()).map(round2),
            bench_cores: per(self.me, procfs::self_cpu_seconds()).map(round2),
        }
    }
}

/// Round to two decimals (for readable JSON).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Print the scenario's JSON line on stdout (and append it to `json_out`).
pub fn emit(scenario: &str, mut facts: Facts, figures: Value, json_out: Option<&Path>) {
    facts.loadavg_end = procfs::loadavg();
    let line = json!({"scenario": scenario, "facts": facts, "figures": figures}).to_string();
    println!("{line}");
    if let Some(path) = json_out {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{line}");
            }
            Err(e) => eprintln!("could not append to {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_reads_percentiles_in_ms() {
        let mut h = new_hist();
        for us in 1..=1000u64 {
            record(&mut h, us * 10); // 10 µs .. 10 ms, uniform
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 5.0).abs() < 0.02, "{l:?}");
        assert!((l.p99_ms - 9.9).abs() < 0.02, "{l:?}");
        assert!((l.max_ms - 10.0).abs() < 0.02, "{l:?}");
        assert!(l.human().starts_with("p50 5.0"));
        assert_eq!(Latency::of(&new_hist()).count, 0);
    }

    #[test]
    fn record_clamps_out_of_range() {
        let mut h = new_hist();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
