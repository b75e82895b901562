"""Interrupt, skip and stop for jobs on replicas: a small Ray actor that holds the flags until the replica runs.

A Serve request cannot be addressed to the replica that took it, so the front door leaves a job's flags here
under the job's dispatch id and the replica running it picks them up on its next progress tick (a few times a
second). The actor is named and lives as long as the front door that made it.
"""

from __future__ import annotations

import ray

NAME = "sd-webui-job-control"
FLAGS = ("interrupt", "skip", "stop_generating")


@ray.remote(num_cpus=0)
class JobControl:
    def __init__(self) -> None:
        self._flags: dict[str, list[str]] = {}

    def send(self, dispatch_id: str, flag: str) -> None:
        if flag not in FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        self._flags.setdefault(dispatch_id, []).append(flag)

    def take(self, dispatch_id: str) -> list[str]:
        """The flags sent for this dispatch since the last take, in order."""
        return self._flags.pop(dispatch_id, [])

    def forget(self, dispatch_id: str) -> None:
        self._flags.pop(dispatch_id, None)

    def pending(self) -> int:
        """How many dispatches have flags waiting (tests: nothing may pile up)."""
        return len(self._flags)


def start(namespace: str) -> ray.actor.ActorHandle:
    """The front door's control actor (made once; a front door that reconnects gets the same)."""
    return JobControl.options(name=NAME, namespace=namespace, get_if_exists=True, lifetime=None).remote()


def find(namespace: str) -> ray.actor.ActorHandle:
    return ray.get_actor(NAME, namespace=namespace)


__all__ = ["FLAGS", "JobControl", "NAME", "find", "start"]
