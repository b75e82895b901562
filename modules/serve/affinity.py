"""Model affinity: a job goes to a free replica that already holds its checkpoint (and its LoRA set) if there is one.

A Ray Serve request router (`modules.serve.router.AffinityRouter`) ranks the replicas for each request: first those holding the
job's checkpoint and every LoRA it names, then those holding its checkpoint, then the rest. Serve sends the
request to the least busy replica of the first rank that has room (each replica takes one job at a time), so
a free replica with the right model wins, and a busy one never holds a job up: a free one with another model
takes it and switches. (ControlNet models are not part of the ranking.)

What a replica holds comes from two sources, the newer of which counts (`Holding.version`): the report each
replica gives Serve every `STATS_PERIOD_S` (`record_routing_stats`), and the report that came back with the
last job the front door saw finish there (`note`), which is exact at the moment the replica becomes free. The
router runs in the front door's process (it is part of the deployment handle), so it reads `note`'s table. No
ray import here.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

from modules.serve.work import Holding

STATS_PERIOD_S = 1.0

_lock = threading.Lock()
_seen: dict[str, Holding] = {}


def note(holding: Holding) -> None:
    """What a replica holds, as its last finished job reported it."""
    with _lock:
        known = _seen.get(holding.replica)
        if known is None or holding.version >= known.version:
            _seen[holding.replica] = holding


def forget() -> None:
    with _lock:
        _seen.clear()


def holding_of(replica_id: str, stats: dict[str, Any] | None) -> Holding | None:
    reported = Holding.from_stats(stats)
    with _lock:
        seen = _seen.get(replica_id)
    if reported is None or (seen is not None and seen.version > reported.version):
        return seen
    return reported


def rank(holdings: Sequence[Holding | None], checkpoint: str | None, networks: Sequence[str]) -> list[list[int]]:
    """Indexes of the replicas in three ranks: the job's checkpoint and all its networks held; its checkpoint;
    the others (shuffled, so equal replicas share the work). Empty ranks are left out."""
    wanted = set(networks)
    exact: list[int] = []
    same: list[int] = []
    other: list[int] = []
    for i, held in enumerate(holdings):
        if checkpoint is not None and held is not None and held.checkpoint == checkpoint:
            (exact if wanted <= set(held.networks) else same).append(i)
        else:
            other.append(i)
    random.shuffle(other)
    return [r for r in (exact, same, other) if r]


__all__ = ["STATS_PERIOD_S", "forget", "holding_of", "note", "rank"]
