//! The performance goals set for this project's 2-core machine, each printed
//! next to what a run measured when the run is the one the goal is about
//! (`goal: p99 ≤ 50 ms — 61.2 ms, missed`), and listed under `goals` in the
//! JSON line. Numbers from other machines are not comparable.

use serde_json::{Value, json};

/// One goal and what a run measured against it.
pub struct Goal {
    what: String,
    measured: String,
    met: bool,
}

impl Goal {
    /// `measured` must be at most `limit` (in `unit`).
    pub fn at_most(what: &str, measured: f64, limit: f64, unit: &str) -> Self {
        Self {
            what: format!("{what} ≤ {limit} {unit}"),
            measured: format!("{measured:.2} {unit}"),
            met: measured <= limit,
        }
    }

    /// Every delivery or request made it.
    pub fn all(what: &str, got: u64, of: u64) -> Self {
        Self {
            what: format!("100 % {what}"),
            measured: format!("{got} of {of}"),
            met: got == of && of > 0,
        }
    }
}

/// Adds the goals' lines to `summary` and their list to `json`.
pub fn attach(goals: &[Goal], summary: &mut Vec<String>, json: &mut Value) {
    for goal in goals {
        summary.push(format!(
            "  goal: {} — {}, {}",
            goal.what,
            goal.measured,
            if goal.met { "met" } else { "missed" }
        ));
    }
    json["goals"] = goals
        .iter()
        .map(|goal| json!({"goal": goal.what, "measured": goal.measured, "met": goal.met}))
        .collect();
}

/// Fan-out: 10k subscribers at 20/s (p99 ≤ 50 ms, ≤ 4 µs of server CPU
/// per delivery) and at 10/s (p99 ≤ 30 ms); 1k subscribers at 250/s
/// (p99 ≤ 15 ms) and at 400/s (all delivered).
pub fn fanout(
    subscribers: u64,
    rate: f64,
    p99_ms: f64,
    delivered: (u64, u64),
    cpu_us: Option<f64>,
) -> Vec<Goal> {
    let all = || Goal::all("delivered", delivered.0, delivered.1);
    match (subscribers, rate as u64) {
        (10_000, 20) => {
            let mut goals = vec![all(), Goal::at_most("p99", p99_ms, 50.0, "ms")];
            goals.extend(cpu_us.map(|us| Goal::at_most("server CPU per delivery", us, 4.0, "µs")));
            goals
        }
        (10_000, 10) => vec![all(), Goal::at_most("p99", p99_ms, 30.0, "ms")],
        (1_000, 250) => vec![all(), Goal::at_most("p99", p99_ms, 15.0, "ms")],
        (1_000, 400) => vec![all()],
        _ => Vec::new(),
    }
}

/// Push → reply on 100 sockets: at 80k req/s p99 ≤ 5 ms, at 100k p99 ≤ 10 ms.
pub fn reqreply(sockets: u64, rate: f64, p99_ms: f64, answered: (u64, u64)) -> Vec<Goal> {
    let limit = match (sockets, rate as u64) {
        (100, 80_000) => 5.0,
        (100, 100_000) => 10.0,
        _ => return Vec::new(),
    };
    vec![
        Goal::all("answered", answered.0, answered.1),
        Goal::at_most("p99", p99_ms, limit, "ms"),
    ]
}
