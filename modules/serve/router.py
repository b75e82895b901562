"""The engine deployment's Ray Serve request router: model affinity (the policy is in `modules.serve.affinity`).

Serve pickles this module by value to send the router wherever a handle routes, so it holds no state of its
own: what replicas hold is read from `modules.serve.affinity`, which is imported, not copied.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from modules.serve import affinity
from modules.serve.work import Work


class AffinityRouter(RequestRouter):
    """Ranks replicas by what they hold (see `modules.serve.affinity`). Without FIFOMixin, a replica found for a
    request serves that request; the front door's own queue already keeps jobs in order."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        args = getattr(pending_request, "args", None) or ()
        work = args[0] if args and isinstance(args[0], Work) else None
        if pending_request is None or work is None:
            return [list(candidate_replicas)]
        holdings = [affinity.holding_of(r.replica_id.unique_id, r.routing_stats) for r in candidate_replicas]
        ranks, waiting = affinity.choose(holdings, work.checkpoint, work.networks,
                                         time.time() - pending_request.created_at)
        if waiting:  # only holders offered: the router tries again after its short back-off
            pending_request.routing_context.should_backoff = True
        return [[candidate_replicas[i] for i in ranked] for ranked in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        args = getattr(pending_request, "args", None) or ()
        if args and isinstance(args[0], Work):
            affinity.expect(replica_id.unique_id, args[0].checkpoint, args[0].networks)


__all__ = ["AffinityRouter"]
