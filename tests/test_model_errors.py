"""Hostile and broken model files are refused with a message that names the file and the problem."""

from __future__ import annotations

import pickle
import struct
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import write_tiny_checkpoint

from modules.devices import choose_precision
from modules.models.checkpoint_files import ModelFileError, read_state_dict
from modules.models.loader import load_model

CPU = choose_precision(torch.device("cpu"))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    write_tiny_checkpoint(path, "sd1")
    return path


def _refused(path, pattern):
    with pytest.raises(ModelFileError, match=pattern) as info:
        load_model(str(path), CPU)
    assert str(info.value).startswith(path.name + ":")
    return info.value


def test_truncated_safetensors(tmp_path, good_checkpoint):
    data = good_checkpoint.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "truncated or corrupt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _refused(path, "empty or truncated")


def test_header_that_lies_about_its_length(tmp_path):
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    _refused(path, "header claims")


def test_garbage_header(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{{{{" + b"\0" * 64)
    _refused(path, "header is not JSON")


def test_png_renamed_to_safetensors(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.safetensors"
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    _refused(path, "not a valid .safetensors file")


def test_text_file_renamed_to_ckpt(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not weights")
    _refused(path, "not a PyTorch checkpoint")


def test_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    _refused(path, "truncated or corrupt checkpoint")


def test_truncated_ckpt(tmp_path):
    whole = tmp_path / "whole.ckpt"
    write_tiny_checkpoint(whole, "sd1", fmt="ckpt")
    path = tmp_path / "cut.ckpt"
    path.write_bytes(whole.read_bytes()[:5000])
    _refused(path, "truncated or corrupt checkpoint")


class _RunsCode:
    """A pickle payload that would create a file if the loader ever executed it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"weight": torch.zeros(1)}, "trap": _RunsCode(marker)}
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    err = _refused(path, "refused: this pickled file asks to build objects outside the safe allow-list")
    assert "safetensors" in str(err)
    assert not marker.exists()


def test_ckpt_with_training_callbacks_still_loads(tmp_path):
    """Real .ckpt files carry Lightning callback objects; those are built as inert stand-ins, not imported."""
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best = 1.0

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    parents = {name: types.ModuleType(name) for name in ("pytorch_lightning", "pytorch_lightning.callbacks")}
    sys.modules.update(parents)
    sys.modules[module.__name__] = module
    try:
        path = tmp_path / "trained.ckpt"
        write_tiny_checkpoint(path, "sd1", fmt="ckpt")
        payload = torch.load(path, weights_only=True)
        payload["callbacks"] = {"ModelCheckpoint": ModelCheckpoint()}
        payload["global_step"] = 470000
        torch.save(payload, path)
    finally:
        for name in (module.__name__, *parents):
            del sys.modules[name]
    state = read_state_dict(str(path))
    assert int(state["global_step"]) == 470000
    assert load_model(str(path), CPU).spec.family == "sd1"


def test_lora_in_the_checkpoint_folder_is_named_as_such(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(path))
    _refused(path, "not a Stable Diffusion checkpoint: it looks like a LoRA")


def test_vae_in_the_checkpoint_folder_is_named_as_such(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)},
              str(path))
    _refused(path, "it looks like a VAE")


def test_checkpoint_missing_unet_weights(tmp_path, good_checkpoint):
    state = load_file(str(good_checkpoint))
    for key in [k for k in state if k.startswith("model.diffusion_model.output_blocks.2.")]:
        del state[key]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    _refused(path, "incomplete|malformed")


def test_checkpoint_with_mismatched_shapes(tmp_path, good_checkpoint):
    state = load_file(str(good_checkpoint))
    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1], 1, 1)
    path = tmp_path / "mangled.safetensors"
    save_file(state, str(path))
    _refused(path, "do not fit")


def test_missing_file(tmp_path):
    _refused(tmp_path / "nowhere.safetensors", "file not found")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 16)
    _refused(path, "unsupported file type")
