"""Notifications for organisers: a POST to `--webhook URL` for a new first place and a new
flag, in a body Discord and Slack both take (`content` and `text`, the same words) with the
facts beside them for any other receiver.

Play never waits for a notification: an event is queued without an await (`notify`) and a
task of its own delivers it. A delivery that fails (no answer in 10 s, a refused connection,
any status but 2xx) is tried again after 1, 2, 4, ... s (at most a minute apart, `Retry-After`
honoured) until MAX_ATTEMPTS; meanwhile later events go out (each has its own schedule). At
most MAX_QUEUED events wait; past that, new ones are dropped and counted in the log, so a
receiver that is down for a day costs a bounded amount of memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

logger = logging.getLogger(__name__)

MAX_QUEUED = 1000
MAX_ATTEMPTS = 10
TIMEOUT_S = 10.0
MAX_DELAY_S = 60.0


@dataclass
class _Pending:
    body: dict[str, Any]
    due: float
    attempts: int = 0


@dataclass
class Webhooks:
    """The delivery queue of one `--webhook URL`."""

    url: str
    base_delay_s: float = 1.0
    pending: list[_Pending] = field(default_factory=list)
    delivered: int = 0
    dropped: int = 0
    _wake: trio.Event = field(default_factory=trio.Event)
    # Set (and replaced) whenever a notification is delivered or given up: for whoever waits.
    progress: trio.Event = field(default_factory=trio.Event)
    # Flags already told of: a repeat of an open flag's cause keeps its id (ops.insert_flag).
    _told: dict[int, None] = field(default_factory=dict)

    def notify(self, event: str, text: str, **facts: Any) -> None:
        """Queue a notification (never blocks, never raises)."""
        if len(self.pending) >= MAX_QUEUED:
            self.dropped += 1
            logger.warning("webhook queue full (%d): a %s notification dropped", MAX_QUEUED, event)
            return
        body = {"event": event, "text": text, "content": text, **facts}
        self.pending.append(_Pending(body, trio.current_time()))
        self._wake.set()

    def first_place(self, game_id: str, title: str, name: str, score: int) -> None:
        self.notify(
            "first_place",
            f"New first place in {title}: {name} with {score}",
            game_id=game_id,
            name=name,
            score=score,
        )

    def flag(self, flag_id: int, reason: str, game_id: str | None, who: str) -> None:
        if flag_id in self._told:
            return
        self._told[flag_id] = None
        if len(self._told) > MAX_QUEUED * 10:
            del self._told[next(iter(self._told))]
        where = f" in {game_id}" if game_id else ""
        self.notify(
            "flag",
            f"Flag {flag_id} to review{where}: {reason.replace('_', ' ')} ({who})",
            flag_id=flag_id,
            reason=reason,
            game_id=game_id,
        )

    async def run(self) -> None:
        """Deliver, forever (cancelled with the server)."""
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while True:
                now = trio.current_time()
                due = [p for p in self.pending if p.due <= now]
                if not due:
                    self._wake = trio.Event()
                    wait = min((p.due for p in self.pending), default=math.inf) - now
                    with trio.move_on_after(wait):
                        await self._wake.wait()
                    continue
                for item in due:
                    await self._deliver(client, item)

    async def _deliver(self, client: httpx.AsyncClient, item: _Pending) -> None:
        item.attempts += 1
        retry_after = None
        try:
            response = await client.post(self.url, json=item.body)
            if 200 <= response.status_code < 300:
                self.pending.remove(item)
                self.delivered += 1
                self._progressed()
                return
            problem = f"HTTP {response.status_code}"
            retry_after = _seconds(response.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        if item.attempts >= MAX_ATTEMPTS:
            self.pending.remove(item)
            self._progressed()
            logger.warning(
                "webhook: a %s notification given up after %d attempts (%s)",
                item.body["event"],
                item.attempts,
                problem,
            )
            return
        delay = min(MAX_DELAY_S, self.base_delay_s * 2 ** (item.attempts - 1))
        if retry_after is not None:
            delay = min(MAX_DELAY_S * 5, max(delay, retry_after))
        item.due = trio.current_time() + delay
        logger.info("webhook: %s; trying again in %.1f s", problem, delay)

    def _progressed(self) -> None:
        self.progress.set()
        self.progress = trio.Event()


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
