//! `group`: groups of (by default) 100 members, all online; every member sends to its group
//! at its share of the stepped total rate; each send is delivered to the other members.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::GroupArgs;
use crate::traffic::{self, Participant, Spec, Target};

pub async fn run(ctx: &Ctx, args: &GroupArgs) -> Result<Value> {
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    let users = ctx.users(args.groups * args.members).await?;
    super::check_open_files(users.len())?;
    let channels = crate::users::ensure_groups(
        &ctx.api,
        &ctx.global.users_file,
        &users,
        args.groups,
        args.members,
    )
    .await?;
    let participants = users
        .chunks(args.members)
        .zip(&channels)
        .flat_map(|(members, channel)| {
            members.iter().map(|u| Participant {
                user: u.clone(),
                target: Target::Channel(channel.clone()),
            })
        })
        .collect();
    let spec = Spec {
        participants,
        deliveries_per_send: args.members as u64 - 1,
        text_chars: args.text_chars,
        max_unacked: args.max_unacked,
        step_secs: args.step_secs,
        p99_limit_ms: args.p99_limit_ms,
        half_step: args.half_step,
        mix: None,
    };
    eprintln!(
        "group: {} groups of {} members ({} sockets), each send delivered {} times",
        args.groups,
        args.members,
        users.len(),
        args.members - 1
    );
    let out = traffic::run(spec, ctx.dialer.clone(), &ctx.probe, &args.rates).await?;
    let best = out
        .steps
        .iter()
        .filter(|s| s.held)
        .map(|s| s.delivered_per_s)
        .fold(0.0, f64::max);
    eprintln!(
        "group: highest send rate held {} msg/s = {best:.0} deliveries/s; reconnects {}{}",
        out.max_held_per_s,
        out.reconnects,
        out.first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    Ok(json!({
        "groups": args.groups,
        "members": args.members,
        "text_chars": args.text_chars,
        "step_secs": args.step_secs,
        "p99_limit_ms": args.p99_limit_ms,
        "max_held_deliveries_per_s": best,
        "outcome": out,
    }))
}
