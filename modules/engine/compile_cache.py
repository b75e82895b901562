"""Where the compiler keeps its artifacts, and the compiler settings that make them last: inductor's disk caches
(generated code, FX graphs, AOTAutograd results) under `<data dir>/cache/torch_compile`, and dynamo's limits on
how many input structures one compiled function may hold. Used by the web UI's process and by the compile process
(modules.engine.compile_worker) alike, so both read and fill the same caches."""

from __future__ import annotations

import os

# each recurring shape (512², 768², 1024², batch 1-8) and each optional-input set compiles once
RECOMPILE_LIMIT = 64


def compile_cache_dir() -> str:
    """Where inductor keeps compiled artifacts: `<data dir>/cache/torch_compile` unless TORCHINDUCTOR_CACHE_DIR
    is already set."""
    from modules import paths

    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(paths.data_path, "cache", "torch_compile")


def use_disk_cache() -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())
    os.makedirs(os.environ["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, RECOMPILE_LIMIT * 4)
