"""Start-up after the launcher: settings, model folders, the first checkpoint.

The browser UI and the HTTP API are not part of this build yet; `start()` says so plainly rather than pretend.
"""

from __future__ import annotations

import logging
import sys

from modules import shared

log = logging.getLogger("webui")


def initialize() -> None:
    """Load settings and scan the model folders. Fast: nothing heavy is imported before it is needed."""
    from modules import filename_patterns
    from modules.models import registry, vae_registry

    shared.opts.load(shared.config_filename)
    filename_patterns.max_filename_part_length = shared.cmd_opts.filenames_max_length
    registry.list_models()
    vae_registry.refresh_vae_list()


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


def start() -> None:
    logging.basicConfig(level=getattr(logging, str(shared.cmd_opts.loglevel or "INFO").upper(), logging.INFO))
    initialize()
    if not shared.cmd_opts.skip_load_model_at_start:
        load_first_model()
    print("The web UI and the HTTP API are not available in this build yet; there is nothing to serve.")


if __name__ == "__main__":
    import launch

    sys.exit(launch.main())
