"""Tiny random-weight upscaler files in the real on-disk formats, made with spandrel's own architecture classes.

Each writer checks that spandrel detects the architecture it meant to write, so a test never passes on a file
that is not what it claims to be.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file


def _save(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, str(path))
    return path


def _check(state_dict: dict[str, torch.Tensor], architecture: str, scale: int | None = None) -> None:
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    assert descriptor.architecture.name == architecture, descriptor.architecture.name
    if scale is not None:
        assert descriptor.scale == scale


def tiny_esrgan(scale: int = 4, seed: int = 0, in_nc: int = 3) -> dict[str, torch.Tensor]:
    """An RRDB network (ESRGAN) with 8 filters and one block."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=in_nc, out_nc=in_nc, num_filters=8, num_blocks=1, scale=scale)
    with torch.no_grad():  # a mid-grey bias keeps the random output away from the clamp at 0
        model.state_dict()[_last_bias(model)].fill_(0.5)
    state = model.state_dict()
    _check(state, "ESRGAN", scale)
    return state


def _last_bias(model: torch.nn.Module) -> str:
    return [k for k in model.state_dict() if k.endswith(".bias")][-1]


def tiny_swinir(scale: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A SwinIR with one stage of one block, window 4."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    model = SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=scale,
                   upsampler="pixelshuffledirect", img_size=16)
    state = model.state_dict()
    _check(state, "SwinIR", scale)
    return state


def tiny_face_model() -> dict[str, torch.Tensor]:
    """A RestoreFormer (a face restoration model, purpose FaceSR): an upscaler folder must refuse it."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    model = RestoreFormer(n_embed=16, embed_dim=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                          resolution=16, z_channels=32, double_z=False, enable_mid=True, head_size=2)
    state = {k: v.half() for k, v in model.state_dict().items()}  # half the bytes; detection reads shapes
    _check(state, "RestoreFormer")
    return state


def write_esrgan(path: Path, scale: int = 4, seed: int = 0, nested: str | None = None) -> Path:
    """A tiny ESRGAN file; `nested` puts the weights under that key, as BasicSR training checkpoints do."""
    state = tiny_esrgan(scale, seed)
    if nested:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({nested: state}, str(path))
        return path
    return _save(state, path)


def write_swinir(path: Path, scale: int = 2) -> Path:
    return _save(tiny_swinir(scale), path)


def write_face_model(path: Path) -> Path:
    return _save(tiny_face_model(), path)


def write_grayscale_esrgan(path: Path) -> Path:
    return _save(tiny_esrgan(2, in_nc=1), path)


def write_unknown_weights(path: Path) -> Path:
    return _save({"encoder.layer.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, path)


def write_corrupt(path: Path) -> Path:
    """A real ESRGAN file cut in half (a failed download)."""
    write_esrgan(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_evil_pickle(path: Path, marker: Path) -> Path:
    """A .pth whose pickle asks to run a shell command (creating `marker`) on load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"params_ema": {"conv_first.weight": _Evil(marker)}}, f, protocol=2)
    return path
