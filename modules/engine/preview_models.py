"""The small networks behind the "Approx NN" and "TAESD" live previews.

"Approx NN" is A1111's VAEApprox: eight unpadded convolutions on a 2x nearest-upscaled, padded latent, giving an
RGB image at a quarter of the final size. "TAESD" is madebyollin's tiny autoencoder decoder, built here on
diffusers' `DecoderTiny` (its layers are TAESD's `nn.Sequential` without the leading clamp, which DecoderTiny
applies in `forward`, so TAESD key `N.*` is DecoderTiny key `layers.{N-1}.*`). Both take the latents the UNet
works on (no VAE scaling factor) and give RGB in about [-1, 1].

Weights are never downloaded. They are looked for where A1111 keeps them (first found wins):
    Approx NN  models/VAE-approx/model.pt                                      (SD1, SD2)
               models/VAE-approx/vaeapprox-sdxl.safetensors | vaeapprox-sdxl.pt (SDXL)
    TAESD      models/VAE-taesd/taesd_decoder.safetensors | .pth, then the same names in models/VAE-approx
               (taesdxl_decoder.* for SDXL)
A missing, refused or unusable file makes `decoder()` return None (the caller shows "Approx cheap") and is logged
once. Files are hostile: read through `checkpoint_files.read_state_dict` (validated safetensors, or the
restricted unpickler), size-capped, and loaded strictly into the known architecture.

Each network is loaded on first use and kept, one per method and model family, on the device and dtype of the
latest request. The memory owner knows it (group "live-preview") and may drop it; the next preview loads it again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from modules import paths

log = logging.getLogger(__name__)

APPROX_NN = "Approx NN"
TAESD = "TAESD"
NETWORK_METHODS = (APPROX_NN, TAESD)
MEMORY_GROUP = "live-preview"
# The real files are 0.2 MB (VAEApprox) and 5 MB (TAESD decoder); anything far larger is not one of them.
MAX_WEIGHTS_BYTES = 64 * 1024**2

# (method, is_sdxl) -> (folders under models/, file names), in search order.
_LOCATIONS: dict[tuple[str, bool], tuple[tuple[str, ...], tuple[str, ...]]] = {
    (APPROX_NN, False): (("VAE-approx",), ("model.pt",)),
    (APPROX_NN, True): (("VAE-approx",), ("vaeapprox-sdxl.safetensors", "vaeapprox-sdxl.pt")),
    (TAESD, False): (("VAE-taesd", "VAE-approx"), ("taesd_decoder.safetensors", "taesd_decoder.pth")),
    (TAESD, True): (("VAE-taesd", "VAE-approx"), ("taesdxl_decoder.safetensors", "taesdxl_decoder.pth")),
}

Decoder = Callable[[torch.Tensor], torch.Tensor]  # (B, 4, h, w) latents -> (B, 3, H, W) RGB in about [-1, 1]


# --- the networks -------------------------------------------------------------------------------------------


class VAEApprox(nn.Module):
    """A1111's "Approx NN" network; attribute names match its `model.pt` keys (conv1 ... conv8)."""

    PAD = 11  # the eight unpadded convolutions shrink each side by 11 pixels in all
    CHANNELS = (8, 16, 32, 64, 32, 16, 8, 3)
    KERNELS = (7, 5, 3, 3, 3, 3, 3, 3)

    def __init__(self, latent_channels: int = 4):
        super().__init__()
        widths = (latent_channels, *self.CHANNELS)
        for i, kernel in enumerate(self.KERNELS):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="nearest")
        x = nn.functional.pad(x, (self.PAD,) * 4)
        for i in range(len(self.KERNELS)):
            x = nn.functional.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.1)
        return x


def taesd_decoder(latent_channels: int = 4) -> nn.Module:
    """diffusers' DecoderTiny configured as TAESD's decoder (as AutoencoderTiny's defaults make it)."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    return DecoderTiny(
        in_channels=latent_channels, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64, 64, 64, 64),
        upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest",
    )


_TAESD_KEY = re.compile(r"^(\d+)\.(.+)$")


def taesd_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TAESD decoder keys (`3.conv.0.weight`) -> DecoderTiny keys (`layers.2.conv.0.weight`). A diffusers
    AutoencoderTiny file (`decoder.layers.*`, encoder keys ignored) is accepted as well. Unknown keys are kept as
    they are, so the strict load refuses the file."""
    if any(k.startswith("decoder.layers.") for k in state):
        return {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _TAESD_KEY.match(key)
        index = int(match.group(1)) if match else 0
        # index 0 is TAESD's clamp, which has no weights: a key for it is not a TAESD decoder's
        mapped[f"layers.{index - 1}.{match.group(2)}" if match and index > 0 else key] = value
    return mapped


def _latent_channels(state: Mapping[str, torch.Tensor], key: str) -> int:
    weight = state.get(key)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"no {key} convolution weight")
    return int(weight.shape[1])


def build_taesd(state: Mapping[str, torch.Tensor]) -> nn.Module:
    mapped = taesd_to_diffusers(state)
    net = taesd_decoder(_latent_channels(mapped, "layers.0.weight"))
    net.load_state_dict(mapped, strict=True)
    return net


def build_approx_nn(state: Mapping[str, torch.Tensor]) -> nn.Module:
    net = VAEApprox(_latent_channels(state, "conv1.weight"))
    net.load_state_dict(dict(state), strict=True)
    return net


_BUILDERS: dict[str, Callable[[Mapping[str, torch.Tensor]], nn.Module]] = {APPROX_NN: build_approx_nn, TAESD: build_taesd}


# --- where the files are ------------------------------------------------------------------------------------


def candidate_paths(method: str, is_sdxl: bool) -> list[str]:
    """Every path searched for `method`'s weights, first one first (the first is the one messages name)."""
    folders, names = _LOCATIONS[(method, is_sdxl)]
    return [os.path.join(paths.models_path, folder, name) for folder in folders for name in names]


def find_weights(method: str, is_sdxl: bool) -> str | None:
    return next((p for p in candidate_paths(method, is_sdxl) if os.path.isfile(p)), None)


def display_path(path: str) -> str:
    """Relative to the data dir when inside it: logs show where to put the file, not the server's layout."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(paths.data_path))
    return path if rel.startswith("..") else rel


def expected_files(method: str, is_sdxl: bool) -> str:
    return " or ".join(display_path(p) for p in candidate_paths(method, is_sdxl))


# --- loading and caching ------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    net: nn.Module
    stamp: tuple[str, int, int]  # path, mtime, size: a changed file is loaded again
    device: torch.device
    dtype: torch.dtype


_lock = threading.RLock()
_loaded: dict[tuple[str, bool], _Loaded] = {}
_refused: dict[tuple[str, bool], tuple[str, int, int]] = {}  # a refused file is not read again until it changes
_warned: set[tuple[str, bool]] = set()  # "missing" is said once per method and family


def _family(is_sdxl: bool) -> str:
    return "sdxl" if is_sdxl else "sd"


def _handle(key: tuple[str, bool]) -> str:
    return f"live-preview:{key[0]}:{_family(key[1])}"


def _fallback_note(method: str) -> str:
    return f'live preview "{method}" shows "Approx cheap" instead'


def clear_cache() -> None:
    """Forget every loaded network, refusal and warning (tests; a settings reload)."""
    from modules.models import memory

    with _lock:
        for key in list(_loaded):
            memory.owner.unregister(_handle(key))
        _loaded.clear()
        _refused.clear()
        _warned.clear()


def _forget(key: tuple[str, bool]) -> Callable[[], None]:
    def unload() -> None:  # the memory owner's unload: the next preview reads the file again
        with _lock:
            _loaded.pop(key, None)
    return unload


def load_network(path: str, method: str) -> nn.Module:
    """The network in `path`, on the CPU in float32, in eval mode. Raises ModelFileError (by file name)."""
    from modules.models.checkpoint_files import ModelFileError, read_state_dict

    size = os.path.getsize(path)
    if size > MAX_WEIGHTS_BYTES:
        raise ModelFileError(path, f"refused: {size} bytes is far larger than a {method} preview network")
    state = read_state_dict(path, "cpu")
    state.pop("global_step", None)
    try:
        net = _BUILDERS[method](state)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelFileError(path, f"does not hold a {method} preview network ({first})") from e
    return net.eval().requires_grad_(False)


def _stamp(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size)


def _missing(key: tuple[str, bool]) -> None:
    if key not in _warned:
        _warned.add(key)
        method, is_sdxl = key
        log.warning("%s: no weights file; put it at %s (nothing is downloaded)",
                    _fallback_note(method), expected_files(method, is_sdxl))


def network(method: str, is_sdxl: bool, device: torch.device | str, dtype: torch.dtype) -> nn.Module | None:
    """The preview network of `method` for the family, on `device` in `dtype`; None when there is no usable file
    (said once in the log)."""
    from modules.models import memory
    from modules.models.checkpoint_files import ModelFileError

    key = (method, bool(is_sdxl))
    device = torch.device(device)
    with _lock:
        path = find_weights(*key)
        stamp = _stamp(path) if path else None
        if stamp is None:
            _missing(key)
            return None
        _warned.discard(key)
        loaded = _loaded.get(key)
        if loaded is None or loaded.stamp != stamp:
            if _refused.get(key) == stamp:
                return None
            try:
                net = load_network(path, method)
            except Exception as e:  # noqa: BLE001 - whatever a hostile file makes the loader raise, refuse it
                _refused[key] = stamp
                reason = e.reason if isinstance(e, ModelFileError) else f"unreadable ({type(e).__name__}: {e})"
                log.warning("%s: refused %s: %s", _fallback_note(method), os.path.basename(path), reason)
                return None
            loaded = _Loaded(net, stamp, torch.device("cpu"), torch.float32)
            _loaded[key] = loaded
            memory.owner.register(_handle(key), memory.module_size_bytes(net), _forget(key), device, MEMORY_GROUP)
        if loaded.device != device or loaded.dtype != dtype:
            loaded.net.to(device=device, dtype=dtype)
            loaded.device, loaded.dtype = device, dtype
            memory.owner.register(_handle(key), memory.module_size_bytes(loaded.net), _forget(key), device,
                                  MEMORY_GROUP)
        memory.owner.touch(_handle(key))
        return loaded.net


def decoder(method: str, is_sdxl: bool, device: torch.device | str, dtype: torch.dtype) -> Decoder | None:
    """latents -> RGB in about [-1, 1] with `method`'s network, or None when it has no usable weights. Runs under
    no_grad on a copy of the latents in the network's dtype; the result is float32."""
    net = network(method, is_sdxl, device, dtype)
    if net is None:
        return None

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(latents.detach().to(device=device, dtype=dtype, copy=True)).float()

    return decode


__all__ = [
    "APPROX_NN",
    "MAX_WEIGHTS_BYTES",
    "NETWORK_METHODS",
    "TAESD",
    "VAEApprox",
    "build_approx_nn",
    "build_taesd",
    "candidate_paths",
    "clear_cache",
    "decoder",
    "expected_files",
    "find_weights",
    "load_network",
    "network",
    "taesd_decoder",
    "taesd_to_diffusers",
]
