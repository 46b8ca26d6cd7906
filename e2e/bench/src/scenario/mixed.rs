//! `mixed`: M online pairs as in `dm`, whose offered operations mix one-on-one messages with
//! the timeline's other items: edits of the sender's latest message, reactions to the latest
//! message received (given and taken back), and read markers to the newest item seen (see
//! [`crate::mix`]). Every item but a read is acked and delivered like a message; a step is
//! held when the acked items keep up with their share of the rate and deliveries meet the
//! p99 limit.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::MixedArgs;
use crate::mix::Mix;
use crate::traffic;

pub async fn run(ctx: &Ctx, args: &MixedArgs) -> Result<Value> {
    let t = &args.traffic;
    let mix = Mix {
        edit_pct: args.edit_pct,
        react_pct: args.react_pct,
        read_pct: args.read_pct,
    };
    if u16::from(mix.edit_pct) + u16::from(mix.react_pct) + u16::from(mix.read_pct) > 90 {
        bail!("--edit-pct, --react-pct and --read-pct add up to more than 90: leave some sends");
    }
    let users = ctx.users(t.pairs * 2).await?;
    super::check_open_files(users.len())?;
    let spec = super::dm::pairs_spec(&users, t, Some(mix));
    eprintln!(
        "mixed: {} pairs ({} sockets), operations {}% edits, {}% reactions, {}% reads, the rest messages; {} s per step",
        t.pairs,
        t.pairs * 2,
        mix.edit_pct,
        mix.react_pct,
        mix.read_pct,
        t.step_secs
    );
    let out = traffic::run(spec, ctx.dialer.clone(), &ctx.probe, &t.rates).await?;
    eprintln!(
        "mixed: highest rate held {} operations/s; reconnects {}{}",
        out.max_held_per_s,
        out.reconnects,
        out.first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    Ok(json!({
        "pairs": t.pairs,
        "text_chars": t.text_chars,
        "step_secs": t.step_secs,
        "p99_limit_ms": t.p99_limit_ms,
        "edit_pct": mix.edit_pct,
        "react_pct": mix.react_pct,
        "read_pct": mix.read_pct,
        "outcome": out,
    }))
}
