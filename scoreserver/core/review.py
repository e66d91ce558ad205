"""The top of the board is reviewed: a saved score above the range the game's trusted players
have shown is held until a reviewer clears it.

Pure, like the rest of the core: the store hands in the best score of each trusted player
(store/ops/sessions.py says who counts: no flagged, held or hidden result, no banned account, and an
account old enough or a result a reviewer cleared) and the game's settings; this module says
where the range ends and whether a score lies above it.

The range's top is the best trusted score itself, not a fence computed from a spread: a
score that nobody trusted has reached is what an organiser wants to look at before it wins
anything, and nothing unreviewed can raise it. A result above the top is held (so it does not
count); one below it cannot raise the top; accounts that are flagged, held, too new or too few
do not count at all. So throwaway accounts, flagged or not, leave the top where it was. Only
a reviewer moves it up, by clearing a held result.

Until the game has `review_min_players` trusted players, the top comes from the settings
(`GameSettings.settings_review_above`), raised by any result a reviewer has cleared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scoreserver.core.rules import GameSettings

REVIEW_TOP_SCORE = "review_top_score"  # result.held_reason: above the trusted range
HELD_FLAGGED = "flagged"  # result.held_reason: an open flag holds the player
OUTLIER_SCORE = "outlier_score"  # the flag a held top score raises for the reviewer

HISTOGRAM_BINS = 24


@dataclass(frozen=True, slots=True)
class TrustedBest:
    """One trusted player's best score, and whether a reviewer cleared it."""

    score: int
    reviewed: bool = False


@dataclass(frozen=True, slots=True)
class ReviewRange:
    """Where a game's trusted range ends. `top` None: no range (nothing is held)."""

    top: int | None
    source: str  # "trusted players", "settings" or "none"
    trusted_players: int
    needed_players: int


def review_range(trusted: Sequence[TrustedBest], settings: GameSettings) -> ReviewRange:
    """The game's range from its trusted players' bests, or from its settings while too few."""
    needed = settings.review_min_players
    if len(trusted) >= needed:
        return ReviewRange(max(t.score for t in trusted), "trusted players", len(trusted), needed)
    reviewed = [t.score for t in trusted if t.reviewed]
    from_settings = settings.settings_review_above()
    tops = [*reviewed, *([] if from_settings is None else [from_settings])]
    if not tops:
        return ReviewRange(None, "none", len(trusted), needed)
    source = "settings" if from_settings is not None and max(tops) == from_settings else "reviewed"
    return ReviewRange(max(tops), source, len(trusted), needed)


def above_range(score: int, found: ReviewRange) -> bool:
    return found.top is not None and score > found.top


def evidence(score: int, found: ReviewRange, trusted: Sequence[TrustedBest]) -> dict[str, object]:
    """What the reviewer sees: the score against the trusted population (a histogram of the
    trusted players' bests, with the range's top marked) and where the top came from."""
    scores = sorted(t.score for t in trusted)
    detail: dict[str, object] = {
        "score": score,
        "range_top": found.top,
        "range_from": found.source,
        "trusted_players": found.trusted_players,
        "trusted_players_needed": found.needed_players,
    }
    if scores:
        detail["trusted_median"] = _quantile(scores, 0.5)
        detail["trusted_p90"] = _quantile(scores, 0.9)
        detail["trusted_best"] = scores[-1]
        detail["histogram"] = histogram(scores, score)
    return detail


def histogram(scores: Sequence[int], score: int) -> dict[str, object]:
    """The trusted bests in HISTOGRAM_BINS equal bins from 0 to past `score`."""
    high = max(max(scores, default=0), score, 1)
    width = max(1, -(-(high + 1) // HISTOGRAM_BINS))
    counts = [0] * HISTOGRAM_BINS
    for value in scores:
        counts[min(HISTOGRAM_BINS - 1, value // width)] += 1
    return {"bin_width": width, "counts": counts}


def _quantile(ordered: Sequence[int], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)
