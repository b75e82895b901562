"""A benchmark's results as it goes: each family's row printed and the whole file written again, so a run cut
short (a device call past its limit) still leaves what it measured."""

from __future__ import annotations

import json
from typing import Any


def record(results: dict[str, Any], family: str, row: dict[str, Any], path: str) -> None:
    results[family] = row
    print(family, json.dumps(row), flush=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
