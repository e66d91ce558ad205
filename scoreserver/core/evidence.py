"""A flag and its evidence in words: what a reviewer reads in a terminal (`flags show`) and on
/admin. Pure: a flag record in, text out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def who(flag: Mapping[str, Any]) -> str:
    if flag.get("user_id") is not None:
        address = flag.get("guest_addr")
        return f"{flag.get('user_name')} (#{flag['user_id']})" + (
            f" at {address}" if address else ""
        )
    return f"guest {flag.get('guest_addr') or '?'}"


# Words for the keys of a flag's evidence; a key not listed is shown with spaces for `_`.
DETAIL_LABELS = {
    "repeats": "times (one cause, counted)",
    "last_at": "last time",
    "bursts_in_period": "bursts in the period",
    "burst_limit": "bursts allowed",
    "burst_period_ms": "burst period",
    "burst_times": "bursts at",
    "claimed_user_id": "claimed to be user",
    "actual_user_id": "is user",
    "points_submitted": "points submitted",
    "token_error": "token problem",
    "submitted_from": "submitted from",
    "session_owner_user_id": "session belongs to user",
    "submitted_by_owner": "submitted by its owner",
    "index": "first bad point (0-based)",
    "seq": "point number",
    "client_ts": "player's time",
    "issued_server_ts": "server time issued",
    "expected_server_ts": "server time expected",
    "latency_ms": "allowance",
    "end_reason": "the game ended by",
    "ended_at": "the game ended at",
    "human_floor_ms": "human floor",
    "intervals": "intervals",
    "below_floor_player_clock": "under the floor (player)",
    "below_floor_bunched": "under the floor, a busy page's (not counted)",
    "below_floor_on_arrival": "under the floor (arrival)",
    "below_floor_needed": "flags at (player)",
    "points_in_window": "points in one window",
    "window_ms": "window",
    "rate_per_s": "points a second",
    "human_max_rate": "the game's ceiling a second",
    "window_ends_at": "window ended at",
    "range_top": "top of the trusted range",
    "range_from": "range from",
    "trusted_players": "trusted players",
    "trusted_players_needed": "trusted players needed",
    "trusted_median": "trusted players' median",
    "trusted_p90": "trusted players' 90th percentile",
    "trusted_best": "best trusted score",
    "histogram": "trusted players' bests",
    "held": "held off boards",
    "shortest_ms_player_clock": "shortest interval (player)",
    "shortest_ms_on_arrival": "shortest interval (arrival)",
    "tripped_on": "tripped on",
    "rhythm_figure": "rhythm when flagged (player)",
    "rhythm_on_arrival": "rhythm when flagged (arrival)",
    "min_rhythm_cv": "flags below",
    "points": "points judged when flagged",
    "mean_interval_ms": "mean interval",
    "max_score": "the game's most",
    "score": "score",
    "population": "other players' scores",
    "fence": "far-out fence",
    "best_other": "best of the others",
}
_TIME_KEYS = ("_ts", "_at", "_times")


def _detail_label(key: str) -> str:
    return DETAIL_LABELS.get(key, key.replace("_", " "))


def _detail_value(key: str, value: object) -> str:
    """Times as times (UTC, to the millisecond), durations with their unit."""

    def when(ms: object) -> str:
        if isinstance(ms, int) and ms > 10**11:
            return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
        return str(ms)

    if key == "histogram" and isinstance(value, dict):
        counts, width = value.get("counts") or [], value.get("bin_width") or 1
        spans = [f"{i * width}-{(i + 1) * width - 1}: {n}" for i, n in enumerate(counts) if n]
        return ", ".join(spans) or "-"
    if key.endswith(_TIME_KEYS):
        if isinstance(value, list):
            return ", ".join(when(v) for v in value) or "-"
        return when(value)
    if ("_ms_" in key or key.endswith("_ms")) and isinstance(value, int | float):
        return f"{value:g} ms"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def render_flag(flag: Mapping[str, Any]) -> str:
    """A flag as a reviewer reads it: who, why, and the session's timeline."""
    repeats = (flag.get("detail") or {}).get("repeats")
    lines = [
        f"flag {flag['id']}: {flag['reason']}  [{flag['status']}]"
        + (f"  x{repeats}" if repeats else ""),
        f"  when        {fmt_time(flag['created_at'])}",
        f"  who         {who(flag)}",
        f"  user agent  {flag.get('user_agent') or '-'}",
        f"  game        {flag.get('game_id') or '-'}",
        f"  session     {flag.get('session_id') or '-'}",
    ]
    if flag.get("resolved_at"):
        lines.append(
            f"  resolved    {fmt_time(flag['resolved_at'])}: {flag.get('resolution_note')}"
        )
    for key, value in (flag.get("detail") or {}).items():
        lines.append(f"  {_detail_label(key):<26} {_detail_value(key, value)}")
    evidence = flag.get("evidence")
    if evidence and evidence.get("session"):
        session = evidence["session"]
        start = session["started_at"]
        lines.append("")
        lines.append(
            f"  session: started {fmt_time(start)}, ended {fmt_time(session['ended_at'])}"
            f" ({session['end_reason'] or 'running'}), state {session['state']}"
        )
        points = evidence["points"]
        lines.append(
            f"  {len(points)} points issued, {len(evidence['rejected'])} rejected,"
            f" {len(evidence['bursts'])} bursts"
        )
        if evidence.get("timing"):
            lines.append("")
            flagged_at = (flag.get("detail") or {}).get("points")
            lines.extend(timing_words(evidence["timing"], flagged_at))
        lines.append("")
        lines.extend(_timeline(start, session.get("ended_at"), points, evidence))
    return "\n".join(lines)


def rhythm_verdict(figure: float, threshold: float, population: Mapping[str, Any] | None) -> str:
    """Where a session's rhythm figure stands: under the flag line, or against the range this
    game's other players show (5th to 95th percentile); the words and the chart agree."""
    if threshold and figure < threshold:
        return "too regular for a person: below the flag line"
    if not population:
        return "above the flag line; no other players yet to compare"
    if figure > population["p95"]:
        return (
            "more irregular than this game's other players (bursts and pauses); the rhythm"
            " flag is only for regularity"
        )
    if figure < population["p5"]:
        return "more regular than this game's other players, but above the flag line"
    return "within what this game's other players show"


def timing_words(timing: dict[str, Any], flagged_at: object = None) -> list[str]:
    """The timing figures of a session, as a reviewer reads them (docs/anti-cheat.md). The
    verdicts rest on the player's clock; arrival figures are context (a network moves them).
    These are over every point the session received; a flag raised earlier (`flagged_at`
    points) carries the figures it was raised on, which this says."""
    floor, threshold = timing["human_floor_ms"], timing["min_rhythm_cv"]
    player_gaps = timing["intervals_player_clock"]
    population = timing.get("population")
    head = f"  timing of all its {timing['points']} points received"
    if isinstance(flagged_at, int) and flagged_at != timing["points"]:
        head += f" (the flag was raised on its first {flagged_at}: its figures above)"
    lines = [head + ":"]
    if timing["rhythm_figure"] is None:
        lines.append("    rhythm: too few points to measure")
    else:
        judged = "" if timing["rhythm_judged"] else " (too few points to be judged)"
        verdict = rhythm_verdict(timing["rhythm_figure"], threshold, population)
        limit = f"flags below {threshold:g}" if threshold else "the rhythm check is off"
        lines.append(
            f"    rhythm on the player's clock: {timing['rhythm_figure']:.3f} ({verdict};"
            f" {limit}){judged}; on arrival {_figure(timing['rhythm_on_arrival'])} (context:"
            " a network moves it)"
        )
    if population:
        lines.append(
            f"    this game's other players: {population['p5']:.3f} to {population['p95']:.3f},"
            f" typically {population['p50']:.3f} ({population['sessions']} recent sessions)"
        )
    else:
        lines.append("    this game's other players: not enough sessions yet to compare")
    if floor:
        needed = timing.get("below_floor_needed")
        at = f"; flags at {needed} or more" if needed else "; too few intervals to judge"
        bunched = timing.get("below_floor_bunched") or 0
        forgiven = f"; {bunched} more after a pause a busy page explains (not counted)"
        lines.append(
            f"    closer than the {floor} ms human floor: {timing['below_floor_player_clock']}"
            f" of {len(player_gaps)} intervals on the player's clock{at};"
            f" {timing['below_floor_on_arrival']} on arrival (context)"
            + (forgiven if bunched else "")
        )
    else:
        lines.append("    human floor: off for this game")
    if player_gaps:
        ordered = sorted(player_gaps)
        lines.append(
            f"    intervals on the player's clock: shortest {ordered[0]} ms,"
            f" median {ordered[len(ordered) // 2]} ms, longest {ordered[-1]} ms"
        )
        lines.extend(_histogram(player_gaps, floor))
    return lines


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _histogram(gaps: list[int], floor: int, width: int = 40) -> list[str]:
    """Intervals in 50 ms bins up to a second (the rest in one), as bars of `#`."""
    bins = [0] * 21
    for gap in gaps:
        bins[min(20, max(0, gap) // 50)] += 1
    top = max(bins) or 1
    out = []
    for index, count in enumerate(bins):
        if not count:
            continue
        low = index * 50
        label = f"{low:>4}-{low + 49:<4} ms" if index < 20 else "1000+     ms"
        mark = "  < floor" if floor and low + 49 < floor else ""
        bar = "#" * max(1, round(count * width / top))
        out.append(f"    {label} {count:>5} {bar}{mark}")
    return out


def _timeline(
    start: int, end: int | None, points: list[dict[str, Any]], evidence: dict[str, Any]
) -> list[str]:
    """Points per second, as a bar per second of the game, with rejections and bursts."""
    last = max(
        [end or start]
        + [p["server_ts"] for p in points]
        + [r["server_ts"] for r in evidence["rejected"]]
    )
    seconds = max(1, (last - start) // 1000 + 1)
    accepted = [0] * seconds
    rejected = [0] * seconds
    bursts = [0] * seconds
    for p in points:
        accepted[min(seconds - 1, max(0, (p["server_ts"] - start) // 1000))] += 1
    for r in evidence["rejected"]:
        rejected[min(seconds - 1, max(0, (r["server_ts"] - start) // 1000))] += 1
    for b in evidence["bursts"]:
        bursts[min(seconds - 1, max(0, (b - start) // 1000))] += 1
    out = ["  second  accepted  rejected  (# accepted, x rejected, ! burst)"]
    for second in range(min(seconds, 600)):
        bar = "#" * min(accepted[second], 40) + "x" * min(rejected[second], 20)
        mark = " !" * min(bursts[second], 5)
        out.append(f"  {second:>6}  {accepted[second]:>8}  {rejected[second]:>8}  {bar}{mark}")
    offsets = [p["server_ts"] - p["client_ts"] for p in points]
    if offsets:
        out.append("")
        out.append(
            f"  clock offset (server - client) over points: min {min(offsets)} ms,"
            f" max {max(offsets)} ms, spread {max(offsets) - min(offsets)} ms"
        )
    return out
