//! Group 6, start: process start → `READY=1` with 3 and with 32 plugins (second start on an
//! existing store, as on every boot after the first), and for the peers process start → all 3
//! children's `main()` (they have no host-level readiness). Interleaved within each round.

use std::time::Instant;

use crate::host::{Bins, Toru, install};
use crate::memory::probes;
use crate::peers::{self, Peer};
use crate::util::{Result, TempDir, fmt_ratios, fmt_us, median};
use crate::{Budget, Opts, Report};

/// Rounds of this group (starts are short).
const ROUNDS: usize = 5;

fn toru_root(bins: &Bins, n: usize) -> Result<TempDir> {
    let root = TempDir::new("start")?;
    install(
        &toru_test_kit::plugins_dir(&root.0),
        &probes(bins, "probe", n),
    )?;
    // First start creates the store (and the setup code); not timed.
    Toru::start_in(bins, root, None, &[], true)?.into_root()
}

/// Run the group.
pub fn run(bins: &Bins, _opts: &Opts, rep: &mut Report) -> Result<()> {
    let mut roots = [
        (3usize, Some(toru_root(bins, 3)?)),
        (32, Some(toru_root(bins, 32)?)),
    ];
    let mut toru: Vec<Vec<f64>> = vec![Vec::new(); roots.len()];
    let mut peer: Vec<Vec<f64>> = vec![Vec::new(); peers::ALL.len()];
    for round in 0..ROUNDS {
        eprintln!("start: round {}/{ROUNDS}", round + 1);
        for (i, (_, root)) in roots.iter_mut().enumerate() {
            let r = root.take().ok_or("root")?;
            let t = Toru::start_in(bins, r, None, &[], true)?;
            toru[i].push(t.start_to_ready.as_secs_f64() * 1e6);
            *root = Some(t.into_root()?);
        }
        for (i, kind) in peers::ALL.into_iter().enumerate() {
            let t0 = Instant::now();
            let p = Peer::start(kind, bins, 3)?;
            peer[i].push(t0.elapsed().as_secs_f64() * 1e6);
            drop(p);
        }
    }
    let per = |v: &[f64]| v.iter().map(|x| fmt_us(*x)).collect::<Vec<_>>().join(" / ");
    let mut s = format!(
        "{ROUNDS} rounds, interleaved. Toru: spawn → `READY=1` on `NOTIFY_SOCKET` (store open, \
         listener bound, every enabled plugin started and ready), second start on an existing \
         store. Peers: spawn → the 3rd child's `main()` (peers' start time includes their first \
         supervision cycle: monit 1 s daemon cycle, supervisord's Python start-up).\n\n"
    );
    s.push_str("| supervisor | p50 | per round | ÷ Toru (3) per round |\n|---|---|---|---|\n");
    for (i, (n, _)) in roots.iter().enumerate() {
        s.push_str(&format!(
            "| **Toru**, {n} plugins → READY | {} | {} | |\n",
            fmt_us(median(&toru[i])),
            per(&toru[i])
        ));
    }
    for (i, kind) in peers::ALL.into_iter().enumerate() {
        let r: Vec<f64> = peer[i].iter().zip(&toru[0]).map(|(p, t)| p / t).collect();
        s.push_str(&format!(
            "| {kind}, 3 children → 3rd main() | {} | {} | {} |\n",
            fmt_us(median(&peer[i])),
            per(&peer[i]),
            fmt_ratios(&r)
        ));
    }
    let p3 = median(&toru[0]);
    rep.set("start3_us", p3);
    rep.set("start32_us", median(&toru[1]));
    rep.section("6. Start", s);
    rep.budget(Budget::new(
        "Start → READY with 3 plugins",
        "≤ 50 ms",
        fmt_us(p3),
        p3 <= 50_000.0,
        "",
    ));
    Ok(())
}
