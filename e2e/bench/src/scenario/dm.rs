//! `dm`: M online pairs exchanging one-on-one messages (both directions) at a fixed total
//! rate, stepped up; the highest rate held with p99 under the limit, and the latency at
//! half of it.

use anyhow::Result;
use serde_json::{Value, json};

use super::Ctx;
use crate::api::User;
use crate::cli::TrafficArgs;
use crate::mix::Mix;
use crate::traffic::{self, Participant, Spec, Target};

pub async fn run(ctx: &Ctx, args: &TrafficArgs) -> Result<Value> {
    let users = ctx.users(args.pairs * 2).await?;
    super::check_open_files(users.len())?;
    let spec = pairs_spec(&users, args, None);
    eprintln!(
        "dm: {} pairs ({} sockets), {} s per step, held = p99 ≤ {} ms and ≥ 95 % acked",
        args.pairs,
        args.pairs * 2,
        args.step_secs,
        args.p99_limit_ms
    );
    let out = traffic::run(spec, ctx.dialer.clone(), &ctx.probe, &args.rates).await?;
    eprintln!(
        "dm: highest rate held {} msg/s (acked and delivered); reconnects {}{}",
        out.max_held_per_s,
        out.reconnects,
        out.first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    Ok(json!({
        "pairs": args.pairs,
        "text_chars": args.text_chars,
        "step_secs": args.step_secs,
        "p99_limit_ms": args.p99_limit_ms,
        "outcome": out,
    }))
}

/// The pairs of `users` (0 with 1, 2 with 3, ...) messaging each other, both directions,
/// with the paced knobs of `args` (and, for `mixed`, the timeline operations' shares).
pub(super) fn pairs_spec(users: &[User], args: &TrafficArgs, mix: Option<Mix>) -> Spec {
    let participants = users
        .chunks(2)
        .flat_map(|pair| {
            [
                Participant {
                    user: pair[0].clone(),
                    target: Target::To(pair[1].user_id.clone()),
                },
                Participant {
                    user: pair[1].clone(),
                    target: Target::To(pair[0].user_id.clone()),
                },
            ]
        })
        .collect();
    Spec {
        participants,
        deliveries_per_send: 1,
        text_chars: args.text_chars,
        max_unacked: args.max_unacked,
        step_secs: args.step_secs,
        p99_limit_ms: args.p99_limit_ms,
        half_step: args.half_step,
        mix,
    }
}
