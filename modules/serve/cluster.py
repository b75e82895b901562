"""Start (or join) the Ray cluster, deploy the engine replicas, and put the front door's queue in front of them.

`start(cmd_opts)` is what `--ray` does at start-up: `ray.init` (a local cluster, or `--ray-address`), Serve
without its HTTP proxy (the front door serves HTTP itself), the job control actor, and the deployment: one
replica per GPU of the cluster (`num_gpus=1` each) or `--ray-replicas N`; on a cluster without GPUs, CPU
replicas that share the CPUs. It returns the `RayJobQueue`; `install(queue)` makes it the process's queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from modules import call_queue, shared
from modules.serve.queue import RayJobQueue
from modules.serve.state import FrontDoorState

log = logging.getLogger(__name__)

NAMESPACE = "sd-webui"
APP = "sd-webui-engine"
DEPLOYMENT = "EngineReplica"
# Passed on to every replica, wherever it runs: no library may reach the network.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "HF_DATASETS_OFFLINE")
HEALTH_CHECK_PERIOD_S = 2.0  # a replica that stops answering is replaced within a few seconds
ROUTER_MAX_BACKOFF_S = 0.05  # a job waiting for the replica that holds its model sees it free within this


@dataclass
class Plan:
    """How many replicas, and what each asks Ray for."""

    replicas: int
    gpus: int  # GPUs in the cluster
    actor_options: dict[str, Any]


def plan(requested: int | None, cluster: dict[str, float], cpus_per_replica: float | None = None) -> Plan:
    """One replica per GPU (default), or `requested`; with no GPU, one CPU replica by default, and the cluster's
    CPUs shared between the replicas (torch uses as many threads as its replica was given)."""
    gpus = int(cluster.get("GPU", 0))
    if requested is not None and requested < 1:
        raise ValueError(f"--ray-replicas {requested}: need at least 1")
    replicas = requested or max(1, gpus)
    if gpus:
        if replicas > gpus:
            raise ValueError(f"--ray-replicas {replicas}: the Ray cluster has {gpus} GPU{'s' if gpus != 1 else ''}, "
                             "and each replica takes one")
        options: dict[str, Any] = {"num_gpus": 1, "num_cpus": cpus_per_replica if cpus_per_replica else 1}
    else:
        cpus = cpus_per_replica or max(1, int(cluster.get("CPU", 1)) // replicas)
        options = {"num_cpus": cpus}
    env = {name: os.environ[name] for name in OFFLINE_VARS if name in os.environ}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return Plan(replicas, gpus, options)


def start(cmd_opts: argparse.Namespace, *, init_kwargs: dict[str, Any] | None = None,
          cpus_per_replica: float | None = None, preload: bool = True, affinity_router: bool = True) -> RayJobQueue:
    """Start or join the cluster and deploy the replicas (returns once every replica is ready to take jobs).
    `affinity_router=False` leaves Serve's default router (power of two choices), for measuring what affinity
    gives."""
    import ray
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from modules.serve import affinity, control
    from modules.serve.replica import EngineReplica, ReplicaSetup
    from modules.serve.router import AffinityRouter

    started = time.perf_counter()
    address = getattr(cmd_opts, "ray_address", None) or None
    joined = ray.is_initialized()
    if not joined:
        # "local": a new cluster of our own, even when another Ray runs on this machine (ray.init would join it)
        ray.init(address=address or "local", namespace=NAMESPACE, include_dashboard=False, **(init_kwargs or {}))
    the_plan = plan(getattr(cmd_opts, "ray_replicas", None), ray.cluster_resources(), cpus_per_replica)
    serve.start(proxy_location="Disabled")
    ctl = control.start(NAMESPACE)
    affinity.forget()
    setup = ReplicaSetup(cmd_opts, dict(shared.opts.data), NAMESPACE, preload)
    routing = {"request_router_config": RequestRouterConfig(
        request_router_class=AffinityRouter, request_routing_stats_period_s=affinity.STATS_PERIOD_S,
        max_backoff_s=ROUTER_MAX_BACKOFF_S)
    } if affinity_router else {}
    deployment = serve.deployment(
        EngineReplica, name=DEPLOYMENT, num_replicas=the_plan.replicas, max_ongoing_requests=1,
        ray_actor_options=the_plan.actor_options, health_check_period_s=HEALTH_CHECK_PERIOD_S, **routing)
    handle = serve.run(deployment.bind(setup), name=APP, route_prefix=None)
    print(f"Ray Serve: {the_plan.replicas} replica{'s' if the_plan.replicas != 1 else ''} "
          f"({'1 GPU each' if the_plan.gpus else 'on the CPU'}) ready in {time.perf_counter() - started:.1f}s"
          + (f", on the cluster at {address}" if address else ""))

    def teardown() -> None:
        try:
            serve.delete(APP)
            if not address:  # a local cluster is ours to stop; a joined one keeps running
                serve.shutdown()
        finally:
            if not joined:
                ray.shutdown()

    return RayJobQueue(handle, lambda dispatch_id, flag: ctl.send.remote(dispatch_id, flag), the_plan.replicas,
                       forget_flags=lambda dispatch_id: ctl.forget.remote(dispatch_id), on_shutdown=teardown)


def install(queue: RayJobQueue) -> None:
    """Make `queue` the process's job queue and its state the front door's (the UI and API read these). The
    front door computes nothing itself: a checkpoint a model job checks here is loaded on the CPU (and dropped),
    never onto a GPU that a replica uses."""
    call_queue.queue = queue
    shared.state = FrontDoorState(queue.running)
    use_cpu = list(getattr(shared.cmd_opts, "use_cpu", None) or [])
    if "all" not in use_cpu:
        shared.cmd_opts.use_cpu = [*use_cpu, "all"]


__all__ = ["APP", "DEPLOYMENT", "NAMESPACE", "Plan", "install", "plan", "start"]
