"""Weight files of the model-based ControlNet preprocessors for tests: random weights in the real architectures,
saved in the layouts the published files have (the ones sd-webui-controlnet downloads into annotator/downloads):
CMU's OpenPose layer names without stage prefixes, PiDiNet's training checkpoint ({"state_dict": {"module.*"}}),
normal_bae's ({"model": {"module.*"}}), plain state dicts for the others, and OneFormer in transformers' folder
layout (config.json, model.safetensors, CLIP tokenizer files) with a tiny config.

`write(root, relative)` writes one file under `root` (a models/ControlNetPreprocessor folder); WRITERS maps each
relative path the preprocessors read to its writer.
"""

from __future__ import annotations

import functools
import json
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import controlnet_aux  # noqa: F401  (imports every annotator, with timm's deprecation warnings)


def _state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state with reproducible random weights (default init scaled down keeps deep nets finite)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var")):
            tensor = torch.randn(tensor.shape, generator=generator) * 0.05
        state[key] = tensor.clone().contiguous()
    return state


def _without_stage_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {".".join(k.split(".")[1:]): v for k, v in state.items()}


def _with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def hed_state() -> dict:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return _state(ControlNetHED_Apache2(), 1)


def pidinet_state() -> dict:
    from controlnet_aux.pidi.model import pidinet

    return {"state_dict": _with_prefix(_state(pidinet(), 2), "module."), "epoch": 14}


def lineart_state(seed: int) -> dict:
    from controlnet_aux.lineart import Generator

    return _state(Generator(3, 1, 3), seed)


def lineart_anime_state() -> dict:
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return _with_prefix(_state(UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False), 5), "module.")


def _silent_last_stage(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Zero the last stage's output layers: random heatmaps are full of peaks, and OpenPose's part matching
    (and the hand and face passes for every "person" found) take minutes on them. A network that finds nobody
    still runs every layer; tests that need a person patch the heatmaps."""
    return {k: torch.zeros_like(v) if k.startswith(prefix) else v for k, v in state.items()}


def body_state() -> dict:
    from controlnet_aux.open_pose.model import bodypose_model

    return _silent_last_stage(_without_stage_prefix(_state(bodypose_model(), 6)), "Mconv7_stage6")


def hand_state() -> dict:
    from controlnet_aux.open_pose.model import handpose_model

    return _silent_last_stage(_without_stage_prefix(_state(handpose_model(), 7)), "Mconv7_stage6")


def face_state() -> dict:
    from controlnet_aux.open_pose.face import FaceNet

    return _state(FaceNet(), 8)


def normal_bae_state() -> dict:
    import contextlib
    import io

    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):
        network = NNET(args)
    return {"model": _with_prefix(_state(network, 9), "module.")}


def mlsd_state() -> dict:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return _state(MobileV2_MLSD_Large(), 10)


def _torch_save(state_fn: Callable[[], dict]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_fn(), path)
    return write


# --- OneFormer (transformers layout) ----------------------------------------------------------------------------

TASK_WORDS = ("the", "task", "is", "semantic")


def tiny_oneformer_config(num_labels: int = 150):
    from transformers import OneFormerConfig, SwinConfig

    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    return OneFormerConfig(backbone_config=backbone.to_dict(), num_labels=num_labels, hidden_dim=32, num_queries=8,
                           encoder_feedforward_dim=32, dim_feedforward=32, decoder_layers=2, encoder_layers=1,
                           conv_dim=32, mask_dim=32, text_encoder_width=32, text_encoder_num_layers=1,
                           text_encoder_vocab_size=64, task_seq_len=16, text_encoder_context_length=16,
                           text_encoder_proj_layers=1, num_attention_heads=2, is_training=False)


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE vocabulary that knows the task sentence's words whole (plus letters), with the merges that
    build them."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[str] = []
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    for word in TASK_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")


def write_oneformer(folder: Path, num_labels: int = 150) -> None:
    from transformers import OneFormerForUniversalSegmentation

    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_oneformer_config(num_labels)
    torch.manual_seed(11)
    model = OneFormerForUniversalSegmentation(config).eval()
    config_dict = config.to_dict()
    config_dict["model_type"] = "oneformer"
    (folder / "config.json").write_text(json.dumps(config_dict), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_tokenizer(folder)


WRITERS: dict[str, Callable[[Path], None]] = {
    "hed/ControlNetHED.pth": _torch_save(hed_state),
    "pidinet/table5_pidinet.pth": _torch_save(pidinet_state),
    "lineart/sk_model.pth": _torch_save(functools.partial(lineart_state, 3)),
    "lineart/sk_model2.pth": _torch_save(functools.partial(lineart_state, 4)),
    "lineart_anime/netG.pth": _torch_save(lineart_anime_state),
    "openpose/body_pose_model.pth": _torch_save(body_state),
    "openpose/hand_pose_model.pth": _torch_save(hand_state),
    "openpose/facenet.pth": _torch_save(face_state),
    "normal_bae/scannet.pt": _torch_save(normal_bae_state),
    "mlsd/mlsd_large_512_fp32.pth": _torch_save(mlsd_state),
    "oneformer_ade20k_swin_large": write_oneformer,
    "oneformer_coco_swin_large": functools.partial(write_oneformer, num_labels=133),
}


def write(root: Path, relative: str) -> Path:
    """Write the weights the preprocessors read at `relative` under `root`; returns the path written."""
    path = root / relative
    WRITERS[relative](path)
    return path
