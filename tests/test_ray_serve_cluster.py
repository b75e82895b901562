"""--ray-address: the front door joins a Ray cluster of two nodes (Ray's own test cluster, both on this machine),
one replica on each. Concurrent clients each get their own picture, the work runs on both nodes, and when a
node goes away mid-run its job runs again on the other node. Skipped, with the reason, when Ray is not
installed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_api_support import client
from test_ray_serve_support import FAST, front_door, params_of, wait_for

from modules import shared

CLIENTS = 6

# a 2-core CI machine running a Ray cluster of several processes can be slow: wait long, never hang
RAY_TIMEOUT = 600


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    # Both nodes on this machine's address (Ray's nodes must agree on one; its loopback-only mode is for a single
    # node). Set up before the tests' network guard: Ray finds that address by asking the routing table.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def door(tmp_path_factory, isolated_data_dir, two_nodes):
    cluster, _ = two_nodes
    with front_door(tmp_path_factory.mktemp("ray-cluster"), isolated_data_dir, address=cluster.address) as running:
        yield running


def _clients(door, seeds: list[int], steps: int) -> list[tuple[int, dict]]:
    barrier = threading.Barrier(len(seeds))

    def one(seed: int) -> tuple[int, dict]:
        body = {**FAST, "steps": steps, "prompt": f"picture {seed}", "seed": seed, "force_task_id": f"task(node-{seed})"}
        with client(door.server, timeout=RAY_TIMEOUT) as c:
            barrier.wait()
            r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return seed, r.json()

    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(one, seeds))


def _check(results: list[tuple[int, dict]]) -> None:
    pictures = set()
    for seed, body in results:
        params, info = params_of(body)
        assert params["Seed"] == str(seed) and params["Prompt"] == f"picture {seed}" and info["all_seeds"] == [seed]
        pictures.add(body["images"][0])
    assert len(pictures) == len(results)


def test_replicas_run_on_both_nodes(door, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", CLIENTS)
    seeds = list(range(500, 500 + CLIENTS))
    _check(_clients(door, seeds, steps=4))
    nodes = {door.queue.get(f"task(node-{s})").replica_node for s in seeds}
    assert len(nodes) == 2


def test_a_node_lost_mid_run_costs_only_a_second_attempt(door, two_nodes, monkeypatch):
    cluster, worker = two_nodes
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", CLIENTS)
    retried = door.queue.retried
    lost: dict = {}

    def remove_worker_mid_job() -> None:
        def on_worker():
            for job in door.queue.running():
                state = getattr(job, "progress_state", None)
                if getattr(job, "replica_node", None) == worker.node_id and state is not None and \
                        state.sampling_step >= 2:
                    return job
            return None

        lost["task"] = wait_for(on_worker, what="a job sampling on the worker node").id
        cluster.remove_node(worker)

    remover = threading.Thread(target=remove_worker_mid_job, daemon=True)
    remover.start()
    seeds = list(range(600, 600 + CLIENTS))
    results = _clients(door, seeds, steps=12)
    remover.join(10)
    _check(results)
    assert lost and door.queue.retried == retried + 1
    assert door.queue.get(lost["task"]).replica_node != worker.node_id  # it finished on the head node
