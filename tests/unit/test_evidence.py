"""The evidence in words agrees with its charts: a rhythm far above this game's players is
called so, a flag's own figures and the session's are told apart, and every duration has its
unit."""

from __future__ import annotations

import re

from scoreserver.core.evidence import render_flag, rhythm_verdict, timing_words

PEOPLE = {"sessions": 40, "p5": 0.18, "p50": 0.25, "p95": 0.32}


def timing(figure: float, points: int = 120) -> dict[str, object]:
    return {
        "points": points,
        "human_floor_ms": 60,
        "min_rhythm_cv": 0.05,
        "rhythm_figure": figure,
        "rhythm_on_arrival": figure,
        "rhythm_judged": True,
        "below_floor_player_clock": 0,
        "below_floor_needed": 12,
        "below_floor_on_arrival": 0,
        "intervals_player_clock": [3, 90, 95, 100],
        "intervals_on_arrival": [3, 90, 95, 100],
        "population": PEOPLE,
    }


def test_a_burst_clickers_rhythm_is_not_called_what_people_show() -> None:
    words = " ".join(timing_words(timing(2.935)))
    assert "within what" not in words
    assert "more irregular than this game's other players" in words
    assert rhythm_verdict(2.935, 0.05, PEOPLE).startswith("more irregular")


def test_each_side_of_the_band_and_the_flag_line_has_its_words() -> None:
    assert rhythm_verdict(0.25, 0.05, PEOPLE) == "within what this game's other players show"
    assert rhythm_verdict(0.1, 0.05, PEOPLE).startswith("more regular")
    assert rhythm_verdict(0.01, 0.05, PEOPLE).startswith("too regular")
    assert rhythm_verdict(0.3, 0.05, None).startswith("above the flag line")
    assert rhythm_verdict(0.01, 0.0, PEOPLE).startswith("more regular")  # the check off


def test_a_flags_figures_and_the_whole_sessions_are_told_apart() -> None:
    flag = {
        "id": 7,
        "reason": "robotic_rhythm",
        "status": "open",
        "created_at": 1_700_000_000_000,
        "user_id": 3,
        "user_name": "bot",
        "detail": {"rhythm_figure": 0.0655, "points": 64, "shortest_ms_player_clock": 3},
        "evidence": {
            "session": {
                "started_at": 1_700_000_000_000,
                "ended_at": 1_700_000_030_000,
                "end_reason": "time_up",
                "state": "submitted",
            },
            "points": [],
            "rejected": [],
            "bursts": [],
            "timing": timing(0.047),
        },
    }
    text = render_flag(flag)
    assert "rhythm when flagged (player)" in text and "points judged when flagged" in text
    assert "timing of all its 120 points received (the flag was raised on its first 64" in text
    assert re.search(r"shortest interval \(player\) +3 ms", text), text
