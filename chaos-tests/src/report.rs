//! The report: one row per scenario, then the details of failures and the replay
//! command, ending with the plain line `chaos: N passed, N failed`.

use std::fmt::Write;

use crate::scenario::Outcome;

/// The table and the closing line.
pub fn render(outcomes: &[(usize, Outcome)], total_s: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>20} {:>6} {:>6} {:>6} {:>6} {:>5} {:>7} {:>5} {:>8} {:>7}  verdict",
        "scenario",
        "seed",
        "ops",
        "acked",
        "failed",
        "indet",
        "lost",
        "corrupt",
        "lin",
        "unavail",
        "heal"
    );
    for (_, o) in outcomes {
        let _ = writeln!(
            out,
            "{:<22} {:>20} {:>6} {:>6} {:>6} {:>6} {:>5} {:>7} {:>5} {:>7.1}s {:>7} {:>5.0}s  {}",
            o.name,
            o.seed,
            o.ops,
            o.acked,
            o.failed,
            o.indeterminate,
            o.lost_acked,
            o.corrupt,
            o.violations,
            o.max_unavailable_s,
            o.heal_s.map_or("never".to_string(), |h| format!("{h:.1}s")),
            o.run_s,
            if o.passed() { "PASS" } else { "FAIL" }
        );
    }
    for (index, o) in outcomes {
        let _ = writeln!(out, "\n{} (seed {}): {}", o.name, o.seed, o.schedule);
        if o.passed() {
            continue;
        }
        if let Some(e) = &o.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for d in o.details.iter().take(20) {
            let _ = writeln!(out, "  {d}");
        }
        if o.details.len() > 20 {
            let _ = writeln!(out, "  ... {} more", o.details.len() - 20);
        }
        let _ = writeln!(
            out,
            "  replay: lauscha-chaos replay --seed {} --scenario {}\n  logs: {}",
            o.seed,
            index + 1,
            o.dir.display()
        );
    }
    let passed = outcomes.iter().filter(|(_, o)| o.passed()).count();
    let _ = writeln!(out, "\ntotal time {total_s:.0} s");
    let _ = writeln!(
        out,
        "chaos: {} passed, {} failed",
        passed,
        outcomes.len() - passed
    );
    out
}
