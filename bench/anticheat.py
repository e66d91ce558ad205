"""Measure the timing rules on simulated people and bots; write the table into
docs/anti-cheat.md (between its `<!-- anticheat-table -->` markers).

    python bench/anticheat.py                 # 10,000 people, 2,000 of each bot kind (~1 min)
    python bench/anticheat.py --quick         # 1,000 and 200, printed only

Each session is judged by the server's own state machine (`rules.GameSession`: assessed every
16 points and at the end, as in play) with the default settings of a new game. The sessions are
those of tests/timing_sim.py, seeded, so the numbers are the same on every run.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoreserver.core.rules import GameSettings  # noqa: E402
from scoreserver.core.timing import TimingTracker  # noqa: E402
from tests.timing_sim import BOTS, GAME_MS, Session, honest, judged  # noqa: E402

DOC = ROOT / "docs" / "anti-cheat.md"
MARK = re.compile(r"(<!-- anticheat-table -->\n).*?(<!-- /anticheat-table -->)", re.S)


def figure(session: Session) -> float | None:
    tracker = TimingTracker(0, 0)
    for arrival, client_ts in zip(session.arrivals, session.client_times, strict=True):
        tracker.add(arrival, client_ts)
    figures = [f for f in (tracker.arrival.rhythm(), tracker.player.rhythm()) if f is not None]
    return min(figures) if figures else None


def row(name: str, sessions: list[Session], expect_flags: bool) -> tuple[str, str]:
    verdicts = [judged(s) for s in sessions]
    flagged = sum(1 for v in verdicts if v)
    reasons = Counter(reason for v in verdicts for reason in set(v))
    figures = sorted(f for s in sessions if (f := figure(s)) is not None)
    low, high = figures[len(figures) // 100], figures[-1 - len(figures) // 100]
    rate = f"{100 * flagged / len(sessions):.2f} %"
    which = ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none"
    points = sum(len(s.arrivals) for s in sessions) / len(sessions)
    line = (
        f"| {name} | {len(sessions):,} | {points:.0f} | {rate} | {which} |"
        f" {low:.3f} to {high:.3f} |"
    )
    good = flagged >= 0.99 * len(sessions) if expect_flags else flagged == 0
    verdict = "ok" if good else "FAILS"
    return line, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sessions; do not write")
    args = parser.parse_args()
    people, bots = (1_000, 200) if args.quick else (10_000, 2_000)
    settings = GameSettings(duration_ms=GAME_MS)
    started = time.perf_counter()
    rng = random.Random(20261129)
    lines, verdicts = [], []
    line, verdict = row("people", [honest(rng) for _ in range(people)], expect_flags=False)
    lines.append(line)
    verdicts.append(verdict)
    for name, bot in BOTS.items():
        line, verdict = row(name, [bot(rng) for _ in range(bots)], expect_flags=True)
        lines.append(line)
        verdicts.append(verdict)
    seconds = time.perf_counter() - started
    table = "\n".join(
        [
            f"Settings: human floor {settings.human_floor_ms} ms, min rhythm"
            f" {settings.min_rhythm_cv}, {GAME_MS // 1000} s games; seed 20261129;"
            f" {seconds:.0f} s to run (`python bench/anticheat.py`).",
            "",
            "| sessions | n | points each (mean) | flagged | by reason | rhythm figure,"
            " 1st to 99th percentile |",
            "|---|---|---|---|---|---|",
            *lines,
        ]
    )
    print(table)
    print("verdicts:", ", ".join(verdicts))
    if not args.quick:
        text = DOC.read_text(encoding="utf-8")
        if not MARK.search(text):
            raise SystemExit(f"{DOC} has no <!-- anticheat-table --> markers")
        DOC.write_text(MARK.sub(lambda m: m[1] + table + "\n" + m[2], text), encoding="utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(v == "ok" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
