"""One place that decides which checkpoints are in memory and where (ComfyUI's model_management, in small).

- `sd_checkpoints_limit` models stay loaded at most (the current one included), least recently used go first.
- With `sd_checkpoints_keep_in_cpu`, only the current model sits on the GPU; the others wait in RAM.
- A checkpoint that fails to load (or was deleted since it was listed) leaves the previous model current and usable.
- Memory of a dropped model is handed back to the OS (gc, CUDA cache, malloc_trim), so switching does not grow.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from modules import devices
from modules.devices import Precision
from modules.models import fp8_storage, offload
from modules.models.checkpoint_files import ModelFileMissingError
from modules.models.loader import check_loadable, load_model
from modules.models.sd_model import StableDiffusionModel
from modules.models.vae_loader import apply_vae


def require_on_disk(checkpoint_info) -> None:
    """A listed checkpoint may have been deleted since the list was made: say so by its title, not by a path."""
    if not os.path.exists(checkpoint_info.filename):
        raise ModelFileMissingError(
            checkpoint_info.filename,
            "the file is no longer on disk (deleted or moved after the checkpoint list was made); "
            "refresh the list",
            name=checkpoint_info.title,
        )


@dataclass
class CachePolicy:
    limit: int = 1  # A1111 sd_checkpoints_limit
    keep_in_cpu: bool = True  # A1111 sd_checkpoints_keep_in_cpu


class ModelManager:
    def __init__(self, precision: Callable[[], Precision], policy: Callable[[], CachePolicy] = CachePolicy):
        self._precision = precision
        self._policy = policy
        self._loaded: OrderedDict[str, StableDiffusionModel] = OrderedDict()  # most recently used last
        self.current: StableDiffusionModel | None = None
        self.lock = threading.RLock()
        self.loaded_listeners: list[Callable[[StableDiffusionModel], None]] = []

    @property
    def loaded_filenames(self) -> list[str]:
        return list(self._loaded)

    def load(self, checkpoint_info, vae_path: str | None = None) -> StableDiffusionModel:
        """Make `checkpoint_info` the current model (with `vae_path`, None = its own VAE) and return it."""
        with self.lock:
            key = checkpoint_info.filename
            self._drop_unwanted_fp8(key)
            if self.current is not None and self._key(self.current) == key:
                fp8_storage.settle(self.current)
                apply_vae(self.current, vae_path)
                offload.place(self.current, self._precision().device)  # offload flags changed since (tests, UI)
                return self.current
            precision = self._precision()
            cached = self._loaded.get(key)
            if cached is not None:
                self._park(self.current, precision)
                offload.place(cached, precision.device)
                model = cached
            else:
                # A missing, wrong or broken file is refused here, from its header, before anything changes.
                require_on_disk(checkpoint_info)
                check_loadable(key, precision)
                previous = (self._key(self.current), self.current.checkpoint_info, self.current.vae_file) \
                    if self.current is not None else None
                self._make_room(precision)
                try:
                    # into RAM first under --medvram/--lowvram; _activate places it
                    model = load_model(key, offload.loading_precision(precision), checkpoint_info=checkpoint_info)
                except BaseException:
                    self._recover(previous, precision)
                    raise
            try:
                apply_vae(model, vae_path)
            finally:
                # A VAE that does not fit is reported, but the checkpoint itself is fine: it stays current.
                self._activate(model, key)
            return model

    def load_auxiliary(self, checkpoint_info) -> StableDiffusionModel:
        """A second model needed next to the current one (the SDXL refiner), on the device, current unchanged.

        It joins the cache like any model; with a cache of one it is not kept after the caller lets go of it.
        """
        with self.lock:
            key = checkpoint_info.filename
            self._drop_unwanted_fp8(key)
            precision = self._precision()
            model = self._loaded.get(key)
            if model is None:
                require_on_disk(checkpoint_info)
                check_loadable(key, precision)
                model = load_model(key, offload.loading_precision(precision), checkpoint_info=checkpoint_info)
                self._loaded[key] = model
            fp8_storage.settle(model)
            offload.place(model, precision.device)
            if self.current is not None:
                self._loaded.move_to_end(key)
                self._loaded.move_to_end(self._key(self.current))
                self._evict(keep=self._key(self.current))
            return model

    def release_auxiliary(self, model: StableDiffusionModel) -> None:
        """After the job: a cached auxiliary model goes back to RAM if only the current one may stay on the GPU."""
        with self.lock:
            if model is not self.current and self._key(model) in self._loaded:
                self._park(model, self._precision())

    def unload(self) -> None:
        """Drop every loaded model (A1111's unload-checkpoint) and give the memory back."""
        with self.lock:
            self._loaded.clear()
            self.current = None
            devices.torch_gc()

    def _drop_unwanted_fp8(self, key: str) -> None:
        """A cached model with 8-bit weights the "FP8 weight" setting no longer wants is loaded again from its file."""
        model = self._loaded.get(key)
        if model is None or fp8_storage.settle(model):
            return
        del self._loaded[key]
        if self.current is model:
            self.current = None
        devices.torch_gc()

    def _activate(self, model: StableDiffusionModel, key: str) -> None:
        fp8_storage.settle(model)  # "FP8 weight": 8-bit UNet weights, before placing (half the bytes to move)
        offload.place(model, self._precision().device)  # --medvram/--lowvram, or plainly on the device
        self._loaded[key] = model
        self._loaded.move_to_end(key)
        self.current = model
        self._evict(keep=key)
        for listener in self.loaded_listeners:
            listener(model)

    @staticmethod
    def _key(model: StableDiffusionModel) -> str:
        return model.checkpoint_info.filename

    def _park(self, model: StableDiffusionModel | None, precision: Precision) -> None:
        """Move a model that stays cached off the GPU if the policy says only the current one lives there."""
        if model is not None and self._policy().keep_in_cpu and precision.device.type != "cpu":
            offload.remove(model)
            offload.forget_graphs(model)  # their memory pools would stay on the GPU while the model waits in RAM
            devices.move_modules(model.modules(), devices.cpu)

    def _make_room(self, precision: Precision) -> None:
        """Before a new model loads: drop the least recently used so it fits; park the current one if it stays."""
        limit = max(1, self._policy().limit)
        dropped = False
        while self._loaded and len(self._loaded) >= limit:
            self._loaded.popitem(last=False)
            dropped = True
        if self.current is not None and self._key(self.current) in self._loaded:
            self._park(self.current, precision)
        else:
            self.current = None  # its memory goes now, before the new model needs it
        if dropped:
            devices.torch_gc()

    def _recover(self, previous: tuple | None, precision: Precision) -> None:
        """A load failed after the header check passed: bring the previous model back (from cache or disk)."""
        self.current = None
        if previous is None:
            return
        key, info, vae_file = previous
        try:
            if key in self._loaded:
                model = self._loaded[key]
                offload.place(model, precision.device)
            else:
                model = load_model(key, offload.loading_precision(precision), checkpoint_info=info)
                apply_vae(model, vae_file)
            self._activate(model, key)
        except Exception:  # the previous file vanished meanwhile: nothing is loaded, and the caller's error stands
            self.current = None

    def _evict(self, keep: str) -> None:
        while len(self._loaded) > max(1, self._policy().limit):
            oldest = next(iter(self._loaded))
            if oldest == keep:
                break
            self._loaded.popitem(last=False)
            devices.torch_gc()
