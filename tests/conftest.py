"""Test-wide guards and helpers.

Nothing may reach the network: any connection to a non-loopback address fails the test that made it.
Model hubs are also told to stay offline, so a code path that would download raises instead of hanging.
`isolated_data_dir` gives a test module (or test) its own --data-dir with tiny checkpoints.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
# One CPU thread per process: the tests' networks are tiny, so torch's thread pool only adds hand-offs, and the
# suite runs two workers, each with servers of its own (which inherit this), on a machine of two cores; with
# torch's default (a thread per core) the offload and queue tests took 1.9x as long, even alone.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from modules import paths  # noqa: E402

# Tests see only the checkpoints they make; tests/test_default_model.py turns the bundled model back on.
paths.bundled_checkpoint = ""


def pytest_sessionstart(session):
    """As the server does before its first model (modules.initialize.freeze_imported_objects): the libraries'
    objects are set aside from the garbage collector, so the full collections that every model load and switch
    runs walk only what the tests made (before: about half of the run time of the model-loading test files)."""
    import torch

    from modules.initialize import freeze_imported_objects

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also where torch was imported before this file
    freeze_imported_objects()
    _keep_ui_config_out_of_the_checkout()


def _keep_ui_config_out_of_the_checkout() -> None:
    """Tests that build the page without a data dir of their own use the checkout's, where the page would write
    ui-config.json and read it back in later runs (old defaults pinned). Theirs goes to a temporary file."""
    import tempfile

    from modules import cmd_args, shared

    checkout = os.path.abspath(paths.script_path)
    temporary = os.path.join(tempfile.mkdtemp(prefix="ui-config-"), "ui-config.json")
    path_defaults = cmd_args._path_defaults

    def defaults(data_dir: str, models_dir: str | None) -> dict[str, str]:
        found = path_defaults(data_dir, models_dir)
        if os.path.abspath(data_dir) == checkout:
            found["ui_config_file"] = temporary
        return found

    cmd_args._path_defaults = defaults
    for action in cmd_args.parser._actions:  # what a plain `parser.parse_args([])` gives
        if action.dest == "ui_config_file":
            action.default = temporary
    if os.path.dirname(os.path.abspath(shared.cmd_opts.ui_config_file or "")) == checkout:
        shared.cmd_opts.ui_config_file = temporary


@pytest.fixture(autouse=True)
def no_leftover_interrupt():
    """Each test starts as a new job does (`State.begin` clears these): an Interrupt or Skip that an earlier
    test's job left set would stop code a test calls outside a job (an upscaler's tiles) before it ran."""
    from modules import shared

    shared.state.interrupted = shared.state.skipped = shared.state.stopping_generation = False


class NetworkAccessError(AssertionError):
    """Raised when a test tries to open a connection off this machine."""


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like never leave the machine
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already be a network look-up


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"test tried to connect to {address!r}; tests must not use the network")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"test tried to connect to {address!r}; tests must not use the network")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_loopback((host,)):
        raise NetworkAccessError(f"test tried to resolve {host!r}; tests must not use the network")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    yield


@contextlib.contextmanager
def _isolated_data_dir(
    root: Path, checkpoints: Mapping[str, Mapping[str, Any]] | None = None, settings: Mapping[str, Any] | None = None
) -> Iterator[Path]:
    """Point --data-dir at `root` with the A1111 model folders, write `checkpoints` (file name -> keyword
    arguments of tiny_models.write_tiny_checkpoint) into models/Stable-diffusion, apply `settings` to opts,
    and list the models and VAEs. Afterwards: model unloaded, settings, command line and model list as before."""
    # imported here so that collecting tests that never use a data dir does not import the web UI
    from tiny_models import write_tiny_checkpoint

    from modules import cmd_args, sd_models, shared, upscalers
    from modules.models import registry, vae_registry
    from modules.networks import files as network_files

    saved = dict(shared.opts.data)
    saved_cmd_opts = shared.cmd_opts  # a data dir opened inside another one gives the outer one back, not defaults
    # cmd_args.parse_args: path flags (--lora-dir, --embeddings-dir, ...) follow --data-dir, as in a real start
    shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", str(root)], environ={}))
    try:
        ckpt_dir = root / "models" / "Stable-diffusion"
        ckpt_dir.mkdir(parents=True)
        (root / "models" / "VAE").mkdir()
        for name, kwargs in (checkpoints or {}).items():
            write_tiny_checkpoint(ckpt_dir / name, **kwargs)
        shared.opts.data.update(settings or {})
        registry.list_models()
        vae_registry.refresh_vae_list()
        network_files.list_available_networks()
        upscalers.refresh()
        yield root
    finally:
        sd_models.unload_model_weights()
        shared.opts.data.clear()
        shared.opts.data.update(saved)
        shared.set_cmd_opts(saved_cmd_opts)
        registry.list_models()
        vae_registry.refresh_vae_list()  # the model and VAE lists are process-wide: leave none of ours behind
        network_files.list_available_networks()
        upscalers.refresh()


@pytest.fixture(scope="session")
def isolated_data_dir():
    """The `_isolated_data_dir` context manager, for fixtures of any scope: `with isolated_data_dir(root, ...)`."""
    return _isolated_data_dir
