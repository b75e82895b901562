"""An extension's `metadata.ini` (A1111's `ExtensionMetadata`) and the load order it asks for.

    [Extension]
    Name = my-extension        ; the name others use in Requires/Before/After (default: the folder name)
    Requires = other-ext, a|b  ; loaded after these; "a|b" is whichever of them is installed
    Before = ext3              ; loaded before these
    After = ext4               ; loaded after these

Names are compared lower-case; both the Name and the folder name of an extension match. An unknown name in
Before/After is ignored, as in A1111. A missing requirement or a cycle is reported by name (`problems`), never
raised: the extensions still load, in folder order where the metadata cannot be followed.
"""

from __future__ import annotations

import configparser
import heapq
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FILENAME = "metadata.ini"


class ExtensionMetadata:
    """The parsed file; an absent file is an empty one. A file that cannot be read sets `error`."""

    filename = FILENAME

    def __init__(self, path: str, canonical_name: str) -> None:
        self.config = configparser.ConfigParser()
        self.error: str | None = None
        try:
            self.config.read(os.path.join(path, FILENAME), encoding="utf8")  # a missing file reads as empty
        except (configparser.Error, UnicodeDecodeError) as e:
            self.config = configparser.ConfigParser()
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.canonical_name = self.config.get("Extension", "Name", fallback=canonical_name).strip().lower()
        self.requires = self.get_script_requirements("Requires", "Extension")

    def get_script_requirements(self, field: str, section: str, extra_section: str | None = None) -> list[str]:
        """The names listed in `field` of `[section]` (and of `[extra_section]`), lower-case (A1111's name)."""
        text = self.config.get(section, field, fallback="")
        if extra_section:
            text += ", " + self.config.get(extra_section, field, fallback="")
        return self.parse_list(text.lower())

    @staticmethod
    def parse_list(text: str) -> list[str]:
        """"ext1 ext2, ext3" -> ["ext1", "ext2", "ext3"] (commas and spaces both separate)."""
        return [x for x in re.split(r"[,\s]+", text.strip()) if x]


@dataclass
class Node:
    """What the sort needs of one extension: its names, its place in folder order and its metadata lists."""

    names: set[str]
    label: str
    requires: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


def _pick(requirement: str, index: dict[str, int]) -> str:
    """"a|b": the first alternative that is installed, else the first one."""
    options = [x for x in requirement.split("|") if x]
    return next((x for x in options if x in index), options[0] if options else requirement)


def load_order(nodes: Sequence[Node]) -> tuple[list[int], list[str]]:
    """Indexes of `nodes` in load order, and the problems found (cycles), each naming the extensions.

    Stable: among extensions free to load, the one earliest in folder order goes first, so without metadata the
    order is the folder order. A cycle is broken at its earliest extension, after reporting it.
    """
    index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.names:
            index.setdefault(name, i)
    edges: list[set[int]] = [set() for _ in nodes]  # i -> j: i loads before j
    for i, node in enumerate(nodes):
        for name in node.requires + node.after:
            j = index.get(_pick(name, index))
            if j is not None and j != i:
                edges[j].add(i)
        for name in node.before:
            j = index.get(_pick(name, index))
            if j is not None and j != i:
                edges[i].add(j)
    incoming = [0] * len(nodes)
    for targets in edges:
        for j in targets:
            incoming[j] += 1

    order: list[int] = []
    problems: list[str] = []
    ready = [i for i, n in enumerate(incoming) if n == 0]
    heapq.heapify(ready)
    placed = [False] * len(nodes)
    while len(order) < len(nodes):
        if not ready:  # everything left waits on something left: a cycle
            cycle = _find_cycle(edges, placed)
            problems.append("Extensions " + ", ".join(f'"{nodes[i].label}"' for i in sorted(set(cycle)))
                            + " ask for a cycle in their load order (metadata.ini Requires/Before/After: "
                            + " before ".join(nodes[i].label for i in cycle)
                            + "); they load in folder order")
            start = min(cycle)
            incoming[start] = 0
            ready = [start]
        i = heapq.heappop(ready)
        if placed[i]:
            continue
        placed[i] = True
        order.append(i)
        for j in edges[i]:
            incoming[j] -= 1
            if incoming[j] == 0 and not placed[j]:
                heapq.heappush(ready, j)
    return order, problems


def _find_cycle(edges: Sequence[set[int]], placed: Sequence[bool]) -> list[int]:
    """One cycle among the unplaced nodes, in load-order direction, returning to its start ([a, b, a])."""
    preds: dict[int, list[int]] = {}
    for i, targets in enumerate(edges):
        if not placed[i]:
            for j in targets:
                preds.setdefault(j, []).append(i)
    # When the sort is stuck every unplaced node waits on an unplaced one: walking back must come round.
    node = min(i for i in range(len(placed)) if not placed[i])
    path: list[int] = []
    seen: dict[int, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(j for j in preds[node] if not placed[j])
    back = path[seen[node]:] + [node]
    return back[::-1]


def missing_requirements(requires: Iterable[str], installed: dict[str, bool]) -> list[tuple[str, str]]:
    """(requirement, "not installed" | "disabled") for each requirement not met; installed: name -> enabled."""
    problems = []
    for requirement in requires:
        name = _pick(requirement, {k: 0 for k in installed})
        if name not in installed:
            problems.append((requirement, "not installed"))
        elif not installed[name]:
            problems.append((name, "disabled"))
    return problems
