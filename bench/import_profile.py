"""Where a restart's import time goes (issue #18 point 2): runs the engine's import chain (what
`bench_restart.py`'s child imports before loading a checkpoint) in fresh interpreters under `python -X importtime`,
and prints each run's wall time and the self time summed per top-level package, slowest first. It also says
whether the interpreter may write bytecode caches and how many imported modules ran without one (source compiled
at import), which costs time on every start where caches cannot be written.

    python bench/import_profile.py --runs 3 --out bench/results/import-profile.json

`--write-caches` first writes the missing caches of the chain's modules (into `PYTHONPYCACHEPREFIX` where set),
as an installation with compiled bytecode has them, then times the runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAIN = ("import torch; from modules import device_warm_up; from bench.jobs import SIZES, ours; "
         "from modules import devices, initialize; from modules.models.loader import load_model")
# after the chain: the imported modules with no bytecode cache next to their source (or under the cache prefix)
MISSING = """
import importlib.util, json, os, py_compile, sys
missing = [m.__file__ for m in list(sys.modules.values())
           if getattr(m, '__file__', None) and m.__file__.endswith('.py')
           and not os.path.exists(importlib.util.cache_from_source(m.__file__))]
"""
CACHE_CHECK = MISSING + """
print('CACHES ' + json.dumps({'dont_write_bytecode': sys.flags.dont_write_bytecode,
      'pycache_prefix': sys.pycache_prefix, 'modules': len(sys.modules), 'without_cache': len(missing),
      'examples': missing[:5]}))
"""
WRITE_CACHES = MISSING + """
written = failed = 0
for source in missing:
    try:
        py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
        written += 1
    except Exception:
        failed += 1
print('WRITTEN', written, 'FAILED', failed)
"""


def self_time_by_package(stderr: str) -> dict[str, float]:
    """`-X importtime` lines: 'import time: self [us] | cumulative | name'; summed per top-level name, seconds."""
    totals: collections.Counter = collections.Counter()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line.split("|")
        try:
            own = int(fields[0].split(":")[1])
        except (IndexError, ValueError):
            continue
        totals[fields[2].strip().split(".")[0]] += own / 1e6
    return dict(totals.most_common())


def run_once(chain: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", chain + "\n" + CACHE_CHECK], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    caches = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("CACHES ")), None)
    packages = self_time_by_package(done.stderr)
    return {"wall_s": round(wall, 2), "self_s_total": round(sum(packages.values()), 2),
            "top_packages_s": {name: round(s, 3) for name, s in list(packages.items())[:15]}, "caches": caches,
            "error": None if done.returncode == 0 else done.stderr[-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chain", default=CHAIN, help="the Python statements whose imports are timed")
    parser.add_argument("--out", default="import-profile.json")
    parser.add_argument("--write-caches", action="store_true", help="write missing bytecode caches first")
    args = parser.parse_args()
    results = {"python": sys.version.split()[0], "env_dont_write_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
               "pycache_prefix": bool(os.environ.get("PYTHONPYCACHEPREFIX")), "runs": []}
    if args.write_caches:
        done = subprocess.run([sys.executable, "-c", args.chain + "\n" + WRITE_CACHES], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        results["caches_written"] = done.stdout.strip().splitlines()[-1:] or done.stderr[-500:]
        print(results["caches_written"], flush=True)
    for _ in range(args.runs):
        results["runs"].append(run_once(args.chain))
        print(json.dumps(results["runs"][-1]), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
