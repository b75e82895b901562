"""Model affinity: a job goes to a free replica that already holds its checkpoint (and its LoRA set) if there is one.

A Ray Serve request router (`modules.serve.router.AffinityRouter`) ranks the replicas for each request: first
those holding the job's checkpoint and every LoRA it names, then those holding its checkpoint, then the rest. Serve sends the
request to the least busy replica of the first rank that has room (each replica takes one job at a time), so
a free replica with the right model wins. When every replica holding the checkpoint is busy, the job waits for
one of them at most as long as a switch takes there (`wait_s`, measured by the replicas), then a free replica
with another model takes it and switches: with a backlog of jobs alternating between two checkpoints, each
replica keeps one instead of switching at every other job. (ControlNet models are not part of the ranking.)

What a replica holds comes from three sources, the newest of which counts (`Holding.version`, the jobs it has
finished): the report each replica gives Serve every `STATS_PERIOD_S` (`record_routing_stats`); the report
that came back with the last job the front door saw finish there (`note`), exact at the moment the replica
becomes free; and the job the router has just sent there (`expect`): a replica busy with a job for checkpoint X
holds X as soon as it is free again. The router runs in the front door's process (it is part of the deployment
handle), so it reads and writes this module's table. No ray import here.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

from modules.serve.work import Holding

STATS_PERIOD_S = 1.0
DEFAULT_WAIT_S = 2.0  # a switch's cost before any replica has measured one
MAX_WAIT_S = 30.0

_lock = threading.Lock()
_seen: dict[str, Holding] = {}


def note(holding: Holding) -> None:
    """What a replica holds, as its last finished job reported it."""
    with _lock:
        known = _seen.get(holding.replica)
        if known is None or holding.version >= known.version:
            _seen[holding.replica] = holding


def expect(replica_id: str, checkpoint: str | None, networks: tuple[str, ...]) -> None:
    """A job was just sent to this replica: from now on it counts as holding the job's checkpoint (it will once
    the job has run), so the next jobs do not also go and switch another replica to it."""
    with _lock:
        known = _seen.get(replica_id)
        _seen[replica_id] = Holding(replica_id, checkpoint, tuple(networks), (known.version if known else 0) + 1,
                                    known.loads if known else 0, known.load_s if known else None)


def switches() -> int:
    """Checkpoint switches the replicas made for jobs, as far as their last reports tell (what affinity saves)."""
    with _lock:
        return sum(h.loads for h in _seen.values())


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


def wait_s(holders: Sequence[Holding]) -> float:
    """How long a job may wait for a busy replica that holds its checkpoint before a free one switches to it: what
    a switch costs (the holders' last load of it), so that waiting never costs more than switching would."""
    measured = [h.load_s for h in holders if h.load_s is not None]
    return min(MAX_WAIT_S, max(measured)) if measured else DEFAULT_WAIT_S


def rank(holdings: Sequence[Holding | None], checkpoint: str | None, networks: Sequence[str]) -> list[list[int]]:
    """Indexes of the replicas in three ranks: the job's checkpoint and all its networks held; its checkpoint;
    the others (shuffled, so equal replicas share the work). Empty ranks are left out."""
    exact, same, other = _ranks(holdings, checkpoint, networks)
    return [r for r in (exact, same, other) if r]


def choose(holdings: Sequence[Holding | None], checkpoint: str | None, networks: Sequence[str],
           waited_s: float) -> tuple[list[list[int]], bool]:
    """The ranks to try now for a job that has waited `waited_s` for a replica, and whether it is still waiting
    for a holder of its checkpoint (then only holders are offered, and the caller tries again shortly)."""
    exact, same, other = _ranks(holdings, checkpoint, networks)
    holders = [holdings[i] for i in exact + same]
    if holders and other and waited_s < wait_s([h for h in holders if h is not None]):
        return [r for r in (exact, same) if r], True
    return [r for r in (exact, same, other) if r], False


def _ranks(holdings: Sequence[Holding | None], checkpoint: str | None, networks: Sequence[str]
           ) -> tuple[list[int], list[int], list[int]]:
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
    return exact, same, other


__all__ = ["DEFAULT_WAIT_S", "MAX_WAIT_S", "STATS_PERIOD_S", "choose", "expect", "forget", "holding_of", "note",
           "rank", "switches", "wait_s"]
