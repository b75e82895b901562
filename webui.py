"""Start-up after the launcher: settings, model folders, the first checkpoint, then the web UI.

The first checkpoint loads as the first job on the shared queue while gradio is imported and the page is
built, so the server answers sooner; a Generate pressed meanwhile simply waits behind the load.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time

from modules import shared
from modules.initialize import (  # noqa: F401
    freeze_imported_objects,
    initialize,
    load_extensions,
    load_first_model,
    run_startup_downloads,
)

log = logging.getLogger("webui")

# Libraries that log every request at INFO (gradio's own client calls to its server go through httpx).
CHATTY_LOGGERS = ("httpx",)


def setup_logging(loglevel: str | None) -> None:
    """The root logger at --loglevel (INFO by default). Chatty libraries only show warnings and errors,
    unless --loglevel DEBUG asks for everything."""
    level = getattr(logging, str(loglevel or "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def claim_data_dir() -> None:
    """One server per data dir: a second one would overwrite the first's settings and styles. Only a process
    that serves takes the lock (--exit and tests that do not serve never get here); it holds it until it ends."""
    from modules import paths

    try:
        paths.lock_data_dir()
    except paths.DataDirInUseError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1) from None


def remove_leftover_temp_files() -> None:
    """Temp files of atomic writes that a crash interrupted (after initialize(): output folders are settings)."""
    from modules import atomic_files, paths

    folders = paths.temp_file_folders(shared.opts.data, getattr(shared.cmd_opts, "styles_file", None) or [])
    atomic_files.remove_leftover_temp_files(folders, before=time.time() - atomic_files.LEFTOVER_AFTER_S)


def check_public_link() -> None:
    """A public link (--share, --ngrok) needs a login (modules/tunnels.py): refused before anything loads."""
    from modules import tunnels

    try:
        tunnels.check_public_link(shared.cmd_opts)
    except ValueError as e:  # PublicLinkError, or a malformed --gradio-auth entry (named, never echoed)
        print(f"Cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def open_ngrok(port: int) -> None:
    """--ngrok TOKEN: the tunnel to the port that now serves; its URL is printed."""
    from modules import tunnels

    if not shared.cmd_opts.ngrok:
        return
    try:
        tunnels.open_ngrok(shared.cmd_opts, port)
    except tunnels.PublicLinkError as e:
        print(f"Cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def start_ray(cmd_opts) -> None:
    """--ray: start (or join) the Ray cluster and put its replicas behind this server's job queue."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SystemExit("Cannot start with --ray: Ray is not installed. Install it with: "
                         f"{sys.executable} -m pip install -r requirements-ray.txt")
    from modules.serve import cluster

    try:
        cluster.install(cluster.start(cmd_opts))
    except ValueError as e:  # --ray-replicas the cluster cannot place
        raise SystemExit(f"Cannot start: {e}") from None


def start() -> None:
    started = time.perf_counter()
    # Start-up makes ~600,000 objects that live as long as the process (torch, diffusers, gradio); the collector
    # walking them again while they are made cost a quarter of the import time. Paused until the page is built.
    gc.disable()
    setup_logging(shared.cmd_opts.loglevel)
    check_public_link()
    claim_data_dir()
    cmd_opts = shared.cmd_opts
    from modules import device_warm_up, devices

    try:  # a bad --device-id is a start-up error with its reason, not a failure of every model load
        device = devices.choose_device(cmd_opts.use_cpu, cmd_opts.device_id)
    except ValueError as e:
        raise SystemExit(f"Cannot start: {e}") from None
    if not cmd_opts.ray:  # with --ray this process runs no model: a CUDA context here would only take memory
        device_warm_up.start(device)  # CUDA, cuBLAS and cuDNN set up while the rest imports and the model loads
    initialize()
    remove_leftover_temp_files()
    from modules import call_queue

    if cmd_opts.ray:  # jobs run on replicas (modules/serve); this process keeps the UI and the API, and no model
        start_ray(cmd_opts)
    first_load = None
    if not (cmd_opts.skip_load_model_at_start or cmd_opts.ui_debug_mode or cmd_opts.ray):
        freeze_imported_objects()  # before the first model exists (see its docstring)
        first_load = call_queue.queue.submit("load-model", load_first_model)
    if cmd_opts.nowebui:
        from modules.api import server as api_server

        open_ngrok(cmd_opts.port or api_server.DEFAULT_PORT)  # ngrok forwards once the server below answers
        gc.enable()
        api_server.serve_api_only(cmd_opts)  # blocks until stopped
        return
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home
    from modules.ui import app, assets, server

    try:
        demo = app.create_ui(first_load)
        mount_api = None
        if cmd_opts.api:
            from modules.api import server as api_server

            mount_api = api_server.mount
        fastapi_app = server.serve(demo, cmd_opts, assets.css(), assets.head(), before_serving=mount_api)
        from modules import script_callbacks

        script_callbacks.app_started_callback(demo, fastapi_app)
        open_ngrok(cmd_opts.port or server.DEFAULT_PORT)
    except ValueError as e:  # a malformed --gradio-auth / --api-auth entry: say which, never echo it
        print(f"Cannot start the web UI: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    gc.enable()
    print(f"Startup time: {time.perf_counter() - started:.1f}s (the model may still be loading)")
    from modules import restart

    def close_on_stop() -> None:  # POST /sdapi/v1/server-stop: block_thread below returns once the UI is closed
        restart.wait_for_stop()
        demo.close()

    threading.Thread(target=close_on_stop, name="stop-watcher", daemon=True).start()
    try:
        demo.block_thread()
    finally:
        call_queue.queue.shutdown(timeout=5)


if __name__ == "__main__":
    import launch

    sys.exit(launch.main())
