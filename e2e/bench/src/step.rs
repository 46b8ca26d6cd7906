//! The figures of one step of the paced scenarios, and their one-line summary.

use serde::Serialize;

use crate::report::{CpuUse, Latency};

/// The figures of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// "step", "warmup" or "half" (half of the highest held rate).
    pub kind: &'static str,
    pub offered_per_s: u64,
    pub secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub lost: u64,
    /// Sends that fell due but were never offered (the socket had `max_unacked` waiting).
    pub unsent: u64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    /// Due time → `message` frame at the recipient.
    pub deliver: Latency,
    /// Due time → `ack` at the sender (the durability point).
    pub ack: Latency,
    /// Due time → the send's answer, an `ack` or an `error` (e.g. `unavailable` when the
    /// node sheds load): how long a client waits to learn what happened.
    pub answer: Latency,
    pub cpu: CpuUse,
    pub held: bool,
    /// `read` frames sent (the `mixed` scenario; they have no ack and are not in `sent`).
    #[serde(skip_serializing_if = "is_zero")]
    pub reads: u64,
    /// `read` frames received (every member's devices get each marker moved).
    #[serde(skip_serializing_if = "is_zero")]
    pub read_frames: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StepResult {
    /// One summary line.
    pub fn human(&self) -> String {
        format!(
            "{:>6} {:>7}/s offered: {:>9.0} acked/s {:>10.0} delivered/s | deliver {} | ack p99 {:.2} ms | answer max {:.0} ms | cpu node {} bench {} | {}{}",
            self.kind,
            self.offered_per_s,
            self.acked_per_s,
            self.delivered_per_s,
            self.deliver.human(),
            self.ack.p99_ms,
            self.answer.max_ms,
            self.cpu
                .node_cores
                .map_or("?".into(), |c| format!("{c:.2}")),
            self.cpu
                .bench_cores
                .map_or("?".into(), |c| format!("{c:.2}")),
            if self.held { "held" } else { "NOT held" },
            if self.errors + self.lost + self.unsent > 0 {
                format!(
                    " (errors {}, lost {}, unsent {})",
                    self.errors, self.lost, self.unsent
                )
            } else {
                String::new()
            }
        )
    }
}
