//! Quotas: how many bytes a class sends past its quota before the daemon's
//! throttle takes hold (it reads the kernel's counters every 50 ms), at 10,
//! 100 and 1000 Mbit/s, next to what the issue allows: 1% of the quota or
//! 100 ms of traffic at the class's rate, whichever is larger. A quota that
//! blocks is enforced by the classifier itself (nothing passes the limit).

use std::{path::Path, time::Duration, time::Instant};

use anyhow::{bail, Result};
use shaper_testkit::sandbox::{Daemon, Sandbox, Stream};
use shaper_user::control::{client, QuotaState};

use super::{
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "quota";
const RATES_MBIT: [u64; 3] = [10, 100, 1000];
/// A quota lasts this long at the class's rate.
const QUOTA_SECONDS: u64 = 2;

pub fn run(report: &mut Report) -> Result<()> {
    for mbit in RATES_MBIT {
        let quota = mbit * 1_000_000 / 8 * QUOTA_SECONDS;
        let past = bytes_past(mbit, quota)?;
        let allowed = (quota / 100).max(mbit * 1_000_000 / 8 / 10);
        report.push(Row::new(
            S,
            format!(
                "bytes past a {} quota at {mbit} Mbit/s (then = 1mbit)",
                shaper_user::units::format_bytes(quota)
            ),
            Figure::new(past as f64, Unit::Bytes),
            "allowed (1% or 100 ms at the rate)",
            Figure::new(allowed as f64, Unit::Bytes),
        ));
    }
    Ok(())
}

/// Sends through a class of `mbit` with a quota of `quota` bytes until it is
/// throttled; the bytes counted past the quota when the throttle applied.
fn bytes_past(mbit: u64, quota: u64) -> Result<u64> {
    let sandbox = Sandbox::new("bquota")?;
    let state = Daemon::dir_for(&sandbox.tag).join("state");
    let config = format!(
        "[daemon]\nstate_dir = \"{}\"\n[[interface]]\nname = \"{}\"\negress = \"10gbit\"\n\
         [[class]]\nname = \"q\"\negress = \"{mbit}mbit\"\nmatch = 'rport == 5601'\n\
         quota = {{ bytes = {quota}, period = \"day\", direction = \"egress\", then = \"1mbit\" }}\n",
        state.display(),
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let _stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5601, &sandbox.a, 4.0 * mbit as f64 * 1e6)?;
    let deadline = Instant::now() + Duration::from_secs(QUOTA_SECONDS * 5 + 10);
    loop {
        let rows = client::usage(&daemon.socket)?;
        if let Some(row) = rows.iter().find(|r| r.state == QuotaState::Throttled) {
            return Ok(row.used_at_action.unwrap_or(row.used_bytes).saturating_sub(quota));
        }
        if Instant::now() > deadline {
            bail!("{mbit} Mbit/s: the quota was not used up in time: {rows:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
