"""Weight patches applied in place on a loaded model, undone exactly (the seam LoRA and later features use).

Why in place: a replayed CUDA graph (and a compiled UNet) reads the weight *storage* it was recorded with. Writing
new values into that storage (`copy_`) is seen by the next replay; replacing a Parameter object would silently
replay stale weights. So patches never change storages, and `storage_version` (what graphs key on) moves only
if a storage is replaced; `version` moves whenever the applied values change (what caches of computed results,
such as conditioning, key on).

Per weight the patcher keeps the original values (a backup, on the GPU when there is room to spare, else in
pinned RAM) while any patch touches it. The patched value is computed from the original every time
(original + sum of strength * delta, in float32, then cast), so removing every patch restores the weight bit for
bit and the order patches arrive in does not matter. Several owners (LoRA today, others later) each hold their
own list; the effective set is their union.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Delta = Callable[[torch.Tensor], torch.Tensor]  # original weight (float32, on the device) -> change at strength 1


@dataclass(frozen=True)
class WeightPatch:
    """Add `strength * compute(original)` to parameter `key` ("<component>.<parameter path>")."""

    key: str
    strength: float
    compute: Delta = field(compare=False)
    identity: tuple = ()  # what makes two patches the same (file, mtime, layer): unchanged ones are not redone
    # Optional fast path for a change that does not depend on the original: add strength * change into the
    # float32 working copy in place (a low-rank LoRA is one addmm instead of a product, a scale and an add).
    accumulate: Callable[[torch.Tensor, float], None] | None = field(default=None, compare=False)

    @property
    def signature(self) -> tuple:
        return (self.key, self.strength, self.identity)


# Keep backups on the GPU only while this much would still be free afterwards (bytes).
GPU_BACKUP_HEADROOM = 4 * 1024**3


class ModelPatcher:
    def __init__(self, components: dict[str, torch.nn.Module]):
        self.components = components
        self.version = 0
        self.storage_version = 0
        self._owners: dict[str, list[WeightPatch]] = {}
        self._applied: dict[str, tuple[tuple, ...]] = {}  # key -> signatures applied now
        self._backups: dict[str, torch.Tensor] = {}
        self.lock = threading.RLock()

    # --- lookup ---------------------------------------------------------------------------------------------

    def parameter(self, key: str) -> torch.nn.Parameter:
        component, _, path = key.partition(".")
        module = self.components.get(component)
        if module is None:
            raise KeyError(f"no model component {component!r}")
        return module.get_parameter(path)

    def original(self, key: str) -> torch.Tensor:
        """The unpatched value of a weight (its backup while patched)."""
        backup = self._backups.get(key)
        return backup if backup is not None else self.parameter(key).data

    @property
    def patched_keys(self) -> list[str]:
        return list(self._applied)

    def patches(self, owner: str) -> list[WeightPatch]:
        return list(self._owners.get(owner, ()))

    # --- changing ---------------------------------------------------------------------------------------------

    def set_patches(self, owner: str, patches: list[WeightPatch]) -> bool:
        """Make `patches` the owner's whole set (an empty list removes them). Returns whether any weight changed."""
        with self.lock, torch.no_grad():
            self._owners[owner] = [p for p in patches if p.strength != 0]
            if not self._owners[owner]:
                del self._owners[owner]
            wanted: dict[str, list[WeightPatch]] = {}
            for owner_patches in self._owners.values():
                for patch in owner_patches:
                    wanted.setdefault(patch.key, []).append(patch)
            changed = False
            try:
                for key in [k for k in self._applied if k not in wanted]:
                    self._restore(key)
                    changed = True
                for key, key_patches in wanted.items():
                    signatures = tuple(sorted((p.signature for p in key_patches), key=repr))
                    if self._applied.get(key) == signatures:
                        continue
                    changed = True
                    self._applied.pop(key, None)  # until it is written whole
                    self._apply(key, key_patches)
                    self._applied[key] = signatures
            except BaseException:
                # Half a set is worse than none (out of memory, a bad file): back to the checkpoint's weights.
                self._owners.clear()
                for key in list(self._backups):
                    self._applied.setdefault(key, ())
                    self._restore(key)
                self.version += 1
                raise
            if changed:
                self.version += 1
            return changed

    def clear(self) -> None:
        for owner in list(self._owners):
            self.set_patches(owner, [])

    def _apply(self, key: str, patches: list[WeightPatch]) -> None:
        param = self.parameter(key)
        if key not in self._backups:
            # 8-bit stored weights may keep their 16-bit values in RAM (models.fp8_storage): start from those
            full = getattr(param, "_sd_full_precision", None)
            self._backups[key] = full if full is not None else self._backup(param.data)
        # One float32 working copy: every delta is computed from the original values first, then added into it.
        total = self._backups[key].to(device=param.device, dtype=torch.float32, copy=True)
        reading = [p for p in patches if p.accumulate is None]
        deltas = [patch.compute(total) for patch in reading]  # from the original, before anything is added
        for patch, delta in zip(reading, deltas, strict=True):
            if delta.shape != total.shape:
                raise ValueError(f"{key}: a patch of shape {tuple(delta.shape)} for a weight of shape "
                                 f"{tuple(total.shape)}")
            total.add_(delta.to(total.device, torch.float32), alpha=patch.strength)
        for patch in patches:
            if patch.accumulate is not None:
                patch.accumulate(total, patch.strength)
        param.data.copy_(total)

    def _restore(self, key: str) -> None:
        param = self.parameter(key)
        param.data.copy_(self._backups.pop(key))
        del self._applied[key]

    @staticmethod
    def _backup(value: torch.Tensor) -> torch.Tensor:
        if value.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(value.device)
            if free - value.numel() * value.element_size() > GPU_BACKUP_HEADROOM:
                return value.clone()
            return value.to("cpu").pin_memory()
        return value.clone()

    def storages_replaced(self) -> None:
        """Call after moving the model (a device change gives new storages): graphs recorded before are stale.
        Backups stay where they are: `_apply` and `_restore` move them to the weight's device when needed."""
        with self.lock:
            self.storage_version += 1


def patcher_for(model) -> ModelPatcher:
    """The patcher of a loaded StableDiffusionModel, made on first use."""
    patcher = getattr(model, "patcher", None)
    if patcher is None:
        components = {"unet": model.unet, **{f"te{i}": te for i, te in enumerate(model.text_encoders)}}
        patcher = ModelPatcher(components)
        model.patcher = patcher
        model.unet._sd_patcher = patcher  # CUDA graphs of this UNet key on its storage_version
    return patcher
