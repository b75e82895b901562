"""Start-up of an engine process (A1111's `modules/initialize.py`): settings, model folders, extensions and scripts,
the first checkpoint. The web UI (`webui.py`) and each Ray replica (`modules/serve/replica.py`) start this way.
"""

from __future__ import annotations

from modules import shared


def initialize() -> None:
    """Load settings and scan the model folders. Fast: nothing heavy is imported before it is needed."""
    from modules import face_restoration, filename_patterns, upscalers
    from modules.models import registry, vae_registry

    shared.opts.load(shared.config_filename)
    filename_patterns.max_filename_part_length = shared.cmd_opts.filenames_max_length
    run_startup_downloads()  # before the scans below, so what --download fetched is listed
    registry.list_models()
    vae_registry.refresh_vae_list()
    upscalers.refresh()
    face_restoration.refresh()
    load_extensions()


def run_startup_downloads() -> None:
    """`--download` URLs; one that fails is printed and the server starts with the models it has."""
    specs = getattr(shared.cmd_opts, "download", None)
    if specs:
        from modules import downloads

        downloads.startup_downloads(specs)


def load_extensions() -> None:
    """Find the extensions and load every script (ours and theirs); a broken one is reported, never fatal."""
    from modules import extensions, scripts, upscalers

    extensions.list_extensions()
    scripts.load_scripts()
    upscalers.refresh()  # again: upscalers that extensions' scripts define join the list, as in A1111


def freeze_imported_objects() -> None:
    """Import the model libraries and set everything alive now aside from the garbage collector (`gc.freeze`).

    Imports leave about 600,000 objects (torch, diffusers, transformers) that live as long as the process; each
    full collection walked all of them again, about 0.35 s on a 2-core machine, and every model load, switch and
    unload runs one to give memory back. Call it before any model exists: a frozen object is never collected, so
    a model in a reference cycle frozen here would stay in memory after it was switched out."""
    import gc

    from modules.models import loader  # noqa: F401  (diffusers' and transformers' model classes)

    gc.collect()
    gc.freeze()


def load_first_model() -> bool:
    """Load the checkpoint from settings / --ckpt / the first found. A bad file is reported, never a crash."""
    from modules import sd_models
    from modules.models.checkpoint_files import ModelFileError

    try:
        model = sd_models.load_model()
    except sd_models.NoCheckpointError as e:
        print(e)
        return False
    except (ModelFileError, ValueError, OSError) as e:
        print(f"Could not load the checkpoint: {e}")
        return False
    print(f"Model loaded: {model.sd_checkpoint_info.title} ({model.spec.display_name}) on {model.device}")
    return True
