"""The pauses between tries of every retry loop: exponential, capped, with jitter.

One rule for the counter's writes, the spool's replay, the notices and the cluster's redirected
commands. Jitter spreads the clients that one outage stopped, so that they do not all come back
in the same instant: ``full`` draws each pause from zero to its bound (the most spread, for
many independent writers), ``half`` from half of it to all of it (for a loop that must not spin:
the replayer, the cluster's redirects).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Literal

Jitter = Literal["full", "half"]


def pauses(first: float, longest: float = math.inf, jitter: Jitter = "full") -> Iterator[float]:
    """Endless pauses in seconds, their bound doubling from ``first`` up to ``longest``."""
    bound = first
    while True:
        yield random.uniform(0 if jitter == "full" else bound / 2, bound)
        bound = min(bound * 2, longest)
