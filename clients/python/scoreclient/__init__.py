"""scoreclient: a Python client for scoreserver (docs/client.md, "Python").

`ScoreClient` (synchronous, for game loops: nothing blocks during play) and
`AsyncScoreClient` (asyncio) carry out the same flow as scoreclient.js: guest or login,
enter, start, points with their tokens, resume after a drop, submit, the receipt.
Every code has words: `explain(code)`, and `set_words` for a game's own.
"""

from __future__ import annotations

from .aio import AsyncGame, AsyncScoreClient, ScoreError, explain, set_words
from .sync import Game, ScoreClient
from .words import WORDS

__all__ = [
    "WORDS",
    "AsyncGame",
    "AsyncScoreClient",
    "Game",
    "ScoreClient",
    "ScoreError",
    "explain",
    "set_words",
]
__version__ = "1.2.0"
