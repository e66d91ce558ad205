"""Measure the anti-cheat rules on simulated people and evasive bots; write the tables into
docs/anti-cheat.md (between its `<!-- anticheat-table -->` markers).

    python bench/anticheat.py                 # 10,000 people, 2,000 of each bot kind (~2 min)
    python bench/anticheat.py --quick         # 2,000 and 200, printed only

Each session is judged by the server's own state machine (`rules.GameSession`: assessed every
16 points and at the end, as in play) with the default settings of a new game. The sessions are
those of tests/timing_sim.py (what the outside probe measured: poor networks with stalls,
mobile clocks, experts near the human ceiling; bots built to evade), seeded, so the numbers are
the same on every run.

The review of the top is simulated over a game's history: every session, people and bots in a
random order, is saved in turn against the range of the results trusted so far
(core/review.py, the server's own function): held if above it; a reviewer clears a held person
(the result then counts as trusted) and bans a held bot. Accounts are old enough to be trusted
for 70 % of people and for every bot (the worst case: a patient cheater's aged accounts).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoreserver.core import review  # noqa: E402
from scoreserver.core.rules import GameSettings  # noqa: E402
from tests.timing_sim import (  # noqa: E402
    BOTS,
    GAME_MS,
    Session,
    Verdict,
    clopper_pearson,
    judge,
    person,
)

DOC = ROOT / "docs" / "anti-cheat.md"
MARK = re.compile(r"(<!-- anticheat-table -->\n).*?(<!-- /anticheat-table -->)", re.S)
SEED = 20261204


@dataclass(slots=True)
class Judged:
    session: Session
    verdict: Verdict
    bot: bool
    aged: bool
    held: bool = False


def history(judged: list[Judged], settings: GameSettings, rng: random.Random) -> None:
    """Save every result in a random order against the range trusted so far (see the module
    docstring); marks each `held`."""
    order = list(judged)
    rng.shuffle(order)
    trusted: list[review.TrustedBest] = []
    for item in order:
        if item.verdict.flagged or item.verdict.score == 0:
            continue  # held by its flag (or nothing saved): never trusted, reviewed as a flag
        found = review.review_range(trusted, settings)
        item.held = review.above_range(item.verdict.score, found)
        if item.held:
            if not item.bot:  # the reviewer clears a person: trusted from now on
                trusted.append(review.TrustedBest(item.verdict.score, reviewed=True))
        elif item.aged:
            trusted.append(review.TrustedBest(item.verdict.score))


def share(count: int, total: int) -> str:
    low, high = clopper_pearson(count, total)
    return f"{100 * count / total:.2f} % ({100 * low:.2f}-{100 * high:.2f})"


def people_rows(people: list[Judged]) -> tuple[list[str], bool]:
    groups: dict[str, list[Judged]] = defaultdict(list)
    for item in people:
        groups["all people"].append(item)
        groups[f"network: {item.session.network}"].append(item)
        groups[f"page: {item.session.page}"].append(item)
        groups[f"skill: {item.session.kind}"].append(item)
    lines = []
    for name in sorted(groups, key=lambda n: (n != "all people", n)):
        items = groups[name]
        flagged = sum(1 for i in items if i.verdict.flagged)
        held = sum(1 for i in items if i.held)
        reasons = Counter(r for i in items for r in set(i.verdict.reasons))
        which = ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none"
        scores = [i.verdict.score for i in items]
        lines.append(
            f"| {name} | {len(items):,} | {statistics.mean(scores):.0f} / {max(scores)} |"
            f" {share(flagged, len(items))} | {which} | {100 * held / len(items):.2f} % |"
        )
    everyone = groups["all people"]
    flagged = sum(1 for i in everyone if i.verdict.flagged)
    _, upper = clopper_pearson(flagged, len(everyone))
    poor = sum(1 for i in everyone if i.session.network != "good")
    ok = flagged / len(everyone) < 0.005 and upper < 0.01 and poor >= len(everyone) / 4
    return lines, ok


def bot_rows(bots: dict[str, list[Judged]], best_person: int) -> tuple[list[str], bool]:
    lines, ok = [], True
    for name, items in bots.items():
        flagged = sum(1 for i in items if i.verdict.flagged)
        above = [i for i in items if i.verdict.score > best_person]
        stopped = sum(1 for i in above if i.verdict.flagged or i.held)
        escaped = [i.verdict.score for i in above if not (i.verdict.flagged or i.held)]
        unflagged = [i.verdict.score for i in items if not i.verdict.flagged and not i.held]
        reasons = Counter(r for i in items for r in set(i.verdict.reasons))
        which = ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none"
        scores = [i.verdict.score for i in items]
        stopped_text = f"{100 * stopped / len(above):.1f} %" if above else "-"
        lines.append(
            f"| {name} | {len(items):,} | {statistics.mean(scores):.0f} / {max(scores)} |"
            f" {share(flagged, len(items))} | {which} | {len(above):,} | {stopped_text} |"
            f" {max(unflagged, default=0)} |"
        )
        if above and (stopped < 0.99 * len(above) or escaped):
            ok = False
    return lines, ok


def throwaways(settings: GameSettings, people: list[Judged], rng: random.Random) -> str:
    """The probe's attack on the old outlier fence: 20 throwaway bot accounts, then 10 bots."""
    trusted = [review.TrustedBest(i.verdict.score) for i in people[:200] if not i.verdict.flagged]
    before = review.review_range(trusted, settings).top
    assert before is not None
    # Throwaways are new accounts: flagged or not, they are not trusted. Even aged ones that
    # score just under the top add nothing above it.
    aged_under = [review.TrustedBest(before) for _ in range(20)]
    after = review.review_range([*trusted, *aged_under], settings).top
    bots = [rng.randint(before + 1, before + 120) for _ in range(10)]
    held = sum(
        1 for score in bots if review.above_range(score, review.review_range(trusted, settings))
    )
    return (
        f"Throwaway accounts: the range's top over 200 people's results is {before}; after 20"
        f" aged throwaway accounts scoring {before} it is {after}; of 10 bots scoring"
        f" {min(bots)}-{max(bots)} after them, {held} held."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sessions; do not write")
    args = parser.parse_args()
    people_n, bots_n = (2_000, 200) if args.quick else (10_000, 2_000)
    settings = GameSettings(duration_ms=GAME_MS)
    started = time.perf_counter()
    rng = random.Random(SEED)
    people = []
    for _ in range(people_n):
        session = person(rng)
        people.append(Judged(session, judge(session, settings), False, rng.random() < 0.7))
    bots: dict[str, list[Judged]] = {}
    for name, make in BOTS.items():
        bots[name] = [
            Judged(s, judge(s, settings), True, True) for s in (make(rng) for _ in range(bots_n))
        ]
    history([*people, *(i for items in bots.values() for i in items)], settings, rng)
    best_person = max(i.verdict.score for i in people)
    person_lines, people_ok = people_rows(people)
    bot_lines, bots_ok = bot_rows(bots, best_person)
    seconds = time.perf_counter() - started
    table = "\n".join(
        [
            f"Default settings of a new game: human floor {settings.human_floor_ms} ms, rhythm"
            f" {settings.min_rhythm_cv:g}, rate ceiling {settings.human_max_rate:g} a second,"
            f" burst {settings.burst_threshold} in {settings.burst_window_ms} ms, latency"
            f" {settings.latency_ms} ms, top held for review; {GAME_MS // 1000} s games;"
            f" seed {SEED}; {seconds:.0f} s to run (`python bench/anticheat.py`). Shares with"
            " their exact 95 % interval (Clopper-Pearson).",
            "",
            "| people | n | score mean / best | flagged | by reason | held for review (top) |",
            "|---|---|---|---|---|---|",
            *person_lines,
            "",
            f"The best person scored {best_person}. Bots:",
            "",
            "| bot | n | score mean / best | flagged by the rules | by reason |"
            " above the best person | of those flagged or held | best neither flagged nor held |",
            "|---|---|---|---|---|---|---|---|",
            *bot_lines,
            "",
            throwaways(settings, people, rng),
        ]
    )
    print(table)
    verdict = "ok" if people_ok and bots_ok else "FAILS"
    print(f"people: {'ok' if people_ok else 'FAILS'}; bots: {'ok' if bots_ok else 'FAILS'}")
    if not args.quick:
        text = DOC.read_text(encoding="utf-8")
        if not MARK.search(text):
            raise SystemExit(f"{DOC} has no <!-- anticheat-table --> markers")
        DOC.write_text(MARK.sub(lambda m: m[1] + table + "\n" + m[2], text), encoding="utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
