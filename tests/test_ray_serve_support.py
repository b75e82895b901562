"""Helpers for the --ray tests (no tests here): a front door whose queue runs jobs on Ray Serve replicas of the
bundled model, serving the API on a loopback port, and small helpers to read results.

Ray is optional: the test modules skip themselves (with the reason) when it is not installed. Each Ray
process gets one CPU and the test clusters two, so the machine's other work keeps its share.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_api_support import ServerThread, decode, serving

from modules import call_queue, infotext_utils, paths, shared

REASON = "Ray is optional (pip install -r requirements-ray.txt); the --ray tests need it"
ray = pytest.importorskip("ray", reason=REASON)
pytest.importorskip("ray.serve", reason=REASON)

from modules.serve import affinity, cluster  # noqa: E402  (imports ray)
from modules.serve.queue import RayJobQueue  # noqa: E402

BUNDLED_TITLE = "default-shapes-v1.safetensors"
OTHER = "other.safetensors"
CHECKPOINTS = {OTHER: {"family": "sd1", "seed": 9}}  # a second checkpoint, for model affinity
SETTINGS = {"samples_save": False, "grid_save": False, "live_previews_enable": True,
            "show_progress_every_n_steps": 1, "sd_model_checkpoint": BUNDLED_TITLE}
# The bundled model at its smallest: a picture in well under a second on one CPU.
FAST = {"prompt": "a red circle at the top left", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
        "cfg_scale": 7, "seed": 1}
# Ray's own processes and every replica: one CPU each; nothing phones home, nothing leaves loopback.
RAY_INIT = {"num_cpus": 2, "_node_ip_address": "127.0.0.1", "log_to_driver": False}


@dataclass
class FrontDoor:
    queue: RayJobQueue
    server: ServerThread
    started_s: float


@contextlib.contextmanager
def front_door(root: Any, isolated_data_dir: Any, *, replicas: int = 2, address: str | None = None,
               init_kwargs: dict[str, Any] | None = None) -> Iterator[FrontDoor]:
    """A data dir with the bundled model (default) and OTHER, a Ray cluster (local, or the one at `address`) with
    `replicas` CPU replicas, installed as this process's queue, and the API served over HTTP."""
    from modules.api.server import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "bundled_checkpoint", paths.BUNDLED_CHECKPOINT)  # conftest hides it; these use it
        with isolated_data_dir(root, CHECKPOINTS, SETTINGS):
            import webui

            webui.load_extensions()  # the scripts a server has (and its replicas): a request may use them
            ns = copy.copy(shared.cmd_opts)
            ns.ray, ns.ray_replicas, ns.ray_address = True, replicas, address
            saved_queue, saved_state = call_queue.queue, shared.state
            started = time.perf_counter()
            queue = cluster.start(ns, init_kwargs=None if address else (init_kwargs or RAY_INIT),
                                  cpus_per_replica=1)
            started_s = time.perf_counter() - started
            try:
                cluster.install(queue)
                with serving(create_app(queue, auth=None)) as server:
                    yield FrontDoor(queue, server, started_s)
            finally:
                # the process's own queue and state come back first: a shutdown that fails (a node already gone)
                # must not leave every later test with a dead queue
                call_queue.queue, shared.state = saved_queue, saved_state
                affinity.forget()
                queue.shutdown(timeout=30)


def params_of(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(the infotext embedded in the first image, parsed; the response's info JSON)."""
    text = decode(body["images"][0]).info["parameters"]
    return infotext_utils.parse_generation_parameters(text), json.loads(body["info"])


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_replicas() -> dict[str, int]:
    """Replica states of the engine deployment, as Serve reports them (e.g. {"RUNNING": 2})."""
    from ray import serve

    app = serve.status().applications.get(cluster.APP)
    if app is None:
        return {}
    return dict(app.deployments[cluster.DEPLOYMENT].replica_states)
