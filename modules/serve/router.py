"""The engine deployment's Ray Serve request router: model affinity (the policy is in `modules.serve.affinity`).

Serve pickles this module by value to send the router wherever a handle routes, so it holds no state of its
own: what replicas hold is read from `modules.serve.affinity`, which is imported, not copied.
"""

from __future__ import annotations

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
        if work is None:
            return [list(candidate_replicas)]
        holdings = [affinity.holding_of(r.replica_id.unique_id, r.routing_stats) for r in candidate_replicas]
        ranks = affinity.rank(holdings, work.checkpoint, work.networks)
        return [[candidate_replicas[i] for i in ranked] for ranked in ranks]


__all__ = ["AffinityRouter"]
