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
