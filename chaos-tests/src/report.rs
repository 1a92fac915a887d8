//! The report: one row per scenario, then the details of failures and the replay
//! command, ending with the plain line `chaos: N passed, N failed`.

use std::fmt::Write;

use crate::scenario::Outcome;
use crate::simulation::SimSummary;

/// The table and the closing line.
pub fn render(
    outcomes: &[(usize, Outcome)],
    not_run: &[(&str, String)],
    sim: Option<&SimSummary>,
    total_s: f64,
) -> String {
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
    for (name, why) in not_run {
        let _ = writeln!(out, "{name:<22} not run: {why}");
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
    let mut passed = outcomes.iter().filter(|(_, o)| o.passed()).count();
    let mut total = outcomes.len();
    if let Some(s) = sim {
        total += 1;
        passed += usize::from(s.passed());
        let _ = writeln!(
            out,
            "\nmetadata simulation: {} seeds from {}, {} client ops ({} answered), {} entries \
             committed, {} fault changes ({} voter crashes), {} snapshots installed, {} seeds failed, \
             {:.0} s  {}",
            s.seeds,
            s.first_seed,
            s.ops,
            s.acked,
            s.committed,
            s.faults,
            s.crashes,
            s.snapshots_installed,
            s.failed_seeds.len(),
            s.run_s,
            if s.passed() { "PASS" } else { "FAIL" }
        );
        for p in s.problems.iter().take(20) {
            let _ = writeln!(out, "  {p}");
        }
        if let Some(seed) = s.failed_seeds.first() {
            let _ = writeln!(out, "  replay: lauscha-chaos sim --seed {seed} --seeds 1");
        }
    }
    let _ = writeln!(out, "\ntotal time {total_s:.0} s");
    if not_run.is_empty() {
        let _ = writeln!(out, "chaos: {} passed, {} failed", passed, total - passed);
    } else {
        let _ = writeln!(
            out,
            "chaos: {} passed, {} failed, {} not run (see above)",
            passed,
            total - passed,
            not_run.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_not_run_are_listed_and_counted_apart() {
        let not_run = [("disk-full", "needs root (a loop device)".to_string())];
        let out = render(&[], &not_run, None, 1.0);
        assert!(out.contains("disk-full              not run: needs root (a loop device)"));
        assert!(out.ends_with("chaos: 0 passed, 0 failed, 1 not run (see above)\n"));
        assert!(render(&[], &[], None, 1.0).ends_with("chaos: 0 passed, 0 failed\n"));
    }
}
