//! What a run reports: the percentiles of the session times, the two tables, and the checks that fail a run that
//! measured nothing (never a timing or a success rate).

use std::time::Duration;

use serde_json::Value;

use crate::{ABUSER_SLOTS, Phase, Result};

/// The `p`-th percentile (nearest rank) in ms; `None` (a session that never got there) ranks above every time.
pub(crate) fn percentile(times: &[Option<Duration>], p: f64) -> Option<f64> {
    let mut v: Vec<Duration> = times.iter().flatten().copied().collect();
    v.sort();
    #[expect(clippy::cast_precision_loss, reason = "counts of sessions are small")]
    let rank = (p / 100.0 * times.len() as f64).ceil();
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a rank within the slice")]
    let rank = (rank as usize).max(1);
    v.get(rank - 1).map(|d| d.as_secs_f64() * 1000.0)
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        None => "fail".into(),
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) if x < 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.0}"),
    }
}

pub(crate) fn header() -> String {
    format!(
        "{:<15} {:<13} {:>8} {:>6} {:>17} {:>17} {:>7} {:>18} {:>8}",
        "config",
        "phase",
        "sessions",
        "ok %",
        "connect p50/p99",
        "banner p50/p99",
        "abuser",
        "flood SYNs (pps)",
        "refused"
    )
}

pub(crate) fn line(r: &Value) -> String {
    let sessions = r["sessions"].as_u64().unwrap_or(0);
    #[expect(clippy::cast_precision_loss, reason = "counts of sessions are small")]
    let ok = if sessions == 0 {
        "-".into()
    } else {
        format!("{:.1}", r["ok"].as_f64().unwrap_or(0.0) * 100.0 / sessions as f64)
    };
    let pair = |k: &str| format!("{}/{}", ms(&r[k]["p50"]), ms(&r[k]["p99"]));
    let abuser = r["abuser"]["max_held"].as_u64().map_or_else(|| "-".into(), |n| n.to_string());
    let flood = r["flood"]["packets"]
        .as_u64()
        .map_or_else(|| "-".into(), |p| format!("{p} ({:.0}k)", r["flood"]["pps"].as_f64().unwrap_or(0.0) / 1000.0));
    let refused = r["refused"].as_u64().map_or_else(|| "-".into(), |n| n.to_string());
    format!(
        "{:<15} {:<13} {sessions:>8} {ok:>6} {:>17} {:>17} {abuser:>7} {flood:>18} {refused:>8}",
        r["config"].as_str().unwrap_or("?"),
        r["phase"].as_str().unwrap_or("?"),
        pair("connect_ms"),
        pair("banner_ms"),
    )
}

/// The second table: why sessions failed, and what the kernel counted meanwhile.
pub(crate) fn detail_header() -> String {
    format!(
        "{:<15} {:<13} {:>8} {:>8} {:>9} {:>8} {:>11} {:>11} {:>12} {:>9} {:>9} {:>9}",
        "config",
        "phase",
        "refused",
        "no conn",
        "no banner",
        "smtp err",
        "lost frames",
        "syncookies",
        "listen drops",
        "421 read",
        "responded",
        "fallbacks"
    )
}

pub(crate) fn detail_line(r: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let (f, k, resp) = (&r["failures"], &r["kernel"], &r["responder"]);
    let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let fallbacks = resp.as_object().map(|_| {
        n(&resp["reset"]) + n(&resp["failed"]) + n(&resp["fallback_no_token"]) + n(&resp["fallback_no_responder"])
    });
    format!(
        "{:<15} {:<13} {:>8} {:>8} {:>9} {:>8} {:>11} {:>11} {:>12} {:>9} {:>9} {:>9}",
        r["config"].as_str().unwrap_or("?"),
        r["phase"].as_str().unwrap_or("?"),
        n(&f["refused"]),
        n(&f["connect_timeout"]) + n(&f["connect_error"]),
        n(&f["no_banner"]),
        n(&f["smtp_error"]),
        n(&k["client_drops"]),
        n(&k["syncookies_sent"]),
        n(&k["listen_drops"]),
        or_dash(r["abuser"]["answered"].as_u64()),
        or_dash(resp["responded"].as_u64()),
        or_dash(fallbacks),
    )
}

/// What must hold in every run, whatever the timings: otherwise the harness measured nothing.
pub(crate) fn check(rows: &[Value]) -> Result<()> {
    let mut problems = Vec::new();
    for r in rows {
        let what = format!("{} / {}", r["config"].as_str().unwrap_or("?"), r["phase"].as_str().unwrap_or("?"));
        let phase = r["phase"].as_str().unwrap_or("");
        if phase == Phase::Baseline.name() {
            if r["ok"].as_u64() == Some(0) {
                problems.push(format!("{what}: no legitimate session succeeded without any flood"));
            }
            if r["failures"]["refused"].as_u64() != Some(0) {
                problems.push(format!("{what}: the legitimate client was refused though under the limit"));
            }
        } else if r["flood"]["packets"].as_u64().unwrap_or(0) == 0 {
            problems.push(format!("{what}: trafgen sent nothing"));
        }
        if phase == Phase::Abuser.name() {
            if r["abuser"]["connected"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!("{what}: the abuser never connected"));
            }
            if r["refused"].as_u64() == Some(0) {
                problems.push(format!("{what}: the enforcer refused nothing of {ABUSER_SLOTS} parallel attempts"));
            }
            if r["responder"].is_object() && r["responder"]["responded"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!("{what}: the responder answered none of the abuser's attempts"));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n").into()) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Config;

    #[test]
    fn percentiles_rank_sessions_that_never_got_there_last() {
        let ms = |n| Some(Duration::from_millis(n));
        let times = [ms(3), None, ms(1), ms(2)];
        assert_eq!(percentile(&times, 50.0), Some(2.0));
        assert_eq!(percentile(&times, 75.0), Some(3.0));
        // The slowest 25% never connected: p99 is a failure, not the slowest success.
        assert_eq!(percentile(&times, 99.0), None);
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn row(config: Config, phase: Phase, ok: u64, packets: u64, refused: Option<u64>) -> Value {
        json!({
            "config": config.name(), "phase": phase.name(), "sessions": 10, "ok": ok,
            "failures": { "refused": 0 },
            "flood": (phase != Phase::Baseline).then(|| json!({ "packets": packets })),
            "abuser": (phase == Phase::Abuser).then(|| json!({ "connected": 3 })),
            "refused": refused,
        })
    }

    #[test]
    fn check_fails_a_run_that_measured_nothing_but_not_a_bad_flood_result() {
        let good = [
            row(Config::Limiter, Phase::Baseline, 10, 0, Some(0)),
            row(Config::Limiter, Phase::Abuser, 0, 5, Some(7)),
            row(Config::Limiter, Phase::Spoofed, 0, 5, Some(0)),
            row(Config::None, Phase::Abuser, 0, 5, None),
        ];
        assert!(check(&good).is_ok(), "no success under a flood is a result, not a failure");
        for (bad, why) in [
            (row(Config::None, Phase::Baseline, 0, 0, None), "no legitimate session"),
            (row(Config::Nft, Phase::Spoofed, 10, 0, Some(0)), "trafgen sent nothing"),
            (row(Config::Nft, Phase::Abuser, 10, 5, Some(0)), "refused nothing"),
        ] {
            let err = check(&[bad]).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
