"""IP-Adapter (SD1.5 and SDXL) as a ControlNet unit: the file, its CLIP vision encoder, the image embeddings, and
the attention processors installed on the UNet for the length of one job.

Files are h94's IP-Adapter releases: `.bin` pickles nesting {"image_proj": {...}, "ip_adapter": {...}} (read
through the restricted loader) or `.safetensors` with the same keys flattened ("image_proj.proj.weight",
"ip_adapter.1.to_k_ip.weight", ...). `ip_adapter.N.to_k_ip/to_v_ip` (N = 1, 3, 5, ...) are the key/value
projections of the image tokens for the UNet's cross-attention layers in diffusers' order. Variants, each built
with diffusers' own conversion (`_convert_ip_adapter_image_proj_to_diffusers`) and classes:
- base (`image_proj.proj.weight` + `image_proj.norm.*`): `ImageProjection` of the encoder's projected image
  embedding, 4 tokens (ip-adapter_sd15, _sd15_light, _sd15_vit-G, _sdxl, _sdxl_vit-h);
- plus (`image_proj.latents`, `image_proj.layers.*`): `IPAdapterPlusImageProjection` (the Resampler) of the
  encoder's penultimate hidden states (ip-adapter-plus_sd15, -plus-face_sd15, -plus_sdxl_vit-h, ...);
- full (`image_proj.proj.3.weight`): `IPAdapterFullImageProjection` of the hidden states (-full-face_sd15).
FaceID, InstantID and PuLID files (insightface embeddings) are refused by name.

The CLIP vision encoder is chosen by the adapter's own shapes (the width of the embedding it reads), among the
files in the clip_vision folders (modules/controlnet/clip_vision.py); a preprocessor that names an encoder
("ip-adapter_clip_sd15": ViT-H, "ip-adapter_clip_sdxl": ViT-bigG) is preferred, and refused by name when the
adapter needs the other one. "ip-adapter-auto" takes whichever fits.

Engine: for a job with IP-Adapter units the UNet gets diffusers' `IPAdapterAttnProcessor2_0` on every
cross-attention layer (sharing the cached adapter weights) and a `MultiIPAdapterImageProjection` as
`encoder_hid_proj`, exactly the state diffusers' `_load_ip_adapter_weights` leaves, and `bump_structure_version`
drops recorded CUDA graphs. At every UNet evaluation the hook puts the units' CLIP embeddings under
`added["image_embeds"]` (one tensor per unit, rows in the evaluation's order: the negative-prompt rows get the
negative embedding as diffusers' `prepare_ip_adapter_image_embeds` makes it: zeros for base adapters, the hidden
states of an all-zero picture for plus/full). A unit's weight is its IP scale; outside its guidance window (or
its hires-fix pass) the scale is 0, which makes the processor skip it. The processors read the scale as a Python
number, which a CUDA graph records; the scales therefore also go under `added["ip_adapter_scales"]` (a tuple,
which diffusers ignores), so each set of scales has its own graph and none replays a stale one. The job's end
(`IPAdapterJob.close`, called even when the job fails) puts back the UNet's own processors and encoder_hid_proj
and bumps the structure version again: the next job without IP-Adapter runs exactly the UNet it ran before.
A unit of weight 0 installs nothing, so its picture is the one without it, bit for bit.

Control modes: "My prompt is more important" and "ControlNet is more important" do not apply to IP-Adapter (the
extension ignores them for IP-Adapter too): both rows get the image tokens at the unit's weight. Only the first
picture of a unit is encoded (the extension's multi-input averaging is not done). Low VRAM moves the CLIP encoder
to the GPU only for the encoding; the adapter's own weights stay on the device for the whole job.

Loaded adapters are memory-owner handles in group "controlnet" (cached per file while unchanged, counted in
`control_net_model_cache_size` like ControlNets); the encoders are handles of their own in the same group.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modules.controlnet import classify, clip_vision, loading
from modules.controlnet.files import ControlModelFile
from modules.engine.unet_call import UNetHookContext
from modules.engine.unet_graph import bump_structure_version
from modules.models import checkpoint_files, memory
from modules.models.checkpoint_files import ModelFileError

log = logging.getLogger(__name__)

MEMORY_GROUP = loading.MEMORY_GROUP
SCALES_KEY = "ip_adapter_scales"  # in UNetInput.added: the graph key of the scales the processors read
# The encoder each of the extension's IP-Adapter preprocessors uses (by our canonical names); None: the adapter's
ENCODER_FOR_MODULE: dict[str, str | None] = {
    "ip-adapter_clip_sd15": "ViT-H/14",
    "ip-adapter_clip_sdxl_plus_vith": "ViT-H/14",
    "ip-adapter_clip_sdxl": "ViT-bigG/14",
    "ip-adapter-auto": None,
}


@dataclass(frozen=True)
class AdapterSpec:
    variant: str  # "base" | "plus" | "full"
    clip_width: int  # width of the encoder output it reads (projection for base, hidden size for plus/full)
    context_width: int  # the UNet's cross-attention (text context) width
    layers: int  # cross-attention layers it patches
    tokens: int  # image tokens it adds (diffusers' num_tokens: 257 CLIP tokens for full, as diffusers counts)

    @property
    def uses_hidden_states(self) -> bool:
        return self.variant != "base"

    @property
    def encoder_output(self) -> str:
        return "hidden states" if self.uses_hidden_states else "image embeddings"


class IPAdapterWeights(torch.nn.Module):
    """An IP-Adapter file as modules: the image projection and, per layer id ("1", "3", ...), the key/value
    projections of the image tokens."""

    def __init__(self, image_proj: torch.nn.Module, to_k_ip: torch.nn.ModuleDict, to_v_ip: torch.nn.ModuleDict):
        super().__init__()
        self.image_proj = image_proj
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip


@dataclass
class LoadedIPAdapter:
    file: ControlModelFile
    spec: AdapterSpec
    module: IPAdapterWeights
    device: torch.device
    dtype: torch.dtype
    file_key: tuple[str, int, int]


def _error(file: ControlModelFile, reason: str) -> loading.ControlModelError:
    return loading.ControlModelError(file.path, reason, name=f"IP-Adapter {file.name}")


def split(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image_proj, ip_adapter) of a flattened file; ValueError for anything else in it."""
    image_proj = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    other = [k for k in flat if not k.startswith(("image_proj.", "ip_adapter."))]
    if not image_proj or not layers:
        raise ValueError("not an IP-Adapter (it needs image_proj.* and ip_adapter.* weights)")
    if other:
        raise ValueError(f"unknown weights beside the IP-Adapter's ({', '.join(other[:3])})")
    return image_proj, layers


def describe(image_proj: Mapping[str, Any], layers: Mapping[str, Any]) -> AdapterSpec:
    """What an IP-Adapter needs, from its key names and shapes; ValueError names what is not supported."""
    if "perceiver_resampler.proj_in.weight" in image_proj or any("lora" in k for k in layers):
        raise ValueError("an IP-Adapter FaceID model (insightface face embeddings), which is not supported")
    if "proj.weight" in image_proj:
        variant, clip_width = "base", _dim(image_proj, "proj.weight", 2, 1)
    elif "proj.3.weight" in image_proj:
        variant, clip_width = "full", _dim(image_proj, "proj.0.weight", 2, 1)
    elif "latents" in image_proj and "proj_in.weight" in image_proj:
        variant, clip_width = "plus", _dim(image_proj, "proj_in.weight", 2, 1)
    elif "norm.weight" in image_proj and "proj.0.weight" in image_proj:
        raise ValueError("an IP-Adapter FaceID model (insightface face embeddings), which is not supported")
    else:
        raise ValueError("an image projection this version does not know "
                         f"({', '.join(sorted(image_proj)[:3])})")
    ids = list(range(1, classify.count_indices(layers, r"(\d+)\.to_k_ip\.weight$"), 2))
    expected = {f"{i}.{name}.weight" for i in ids for name in ("to_k_ip", "to_v_ip")}
    if not ids or set(layers) != expected:
        extra = sorted(set(layers) ^ expected)
        raise ValueError(f"its ip_adapter layers are not numbered 1, 3, 5, ... ({', '.join(extra[:3])})")
    context = {_dim(layers, k, 2, 1) for k in layers}
    if len(context) != 1:
        raise ValueError("its layers take text contexts of different widths")
    for i in ids:
        if tuple(layers[f"{i}.to_k_ip.weight"].shape) != tuple(layers[f"{i}.to_v_ip.weight"].shape):
            raise ValueError(f"layer {i}: to_k_ip and to_v_ip differ in shape")
    width = context.pop()
    if variant == "base":
        tokens = _dim(image_proj, "proj.weight", 2, 0) // max(width, 1)
    else:
        tokens = _dim(image_proj, "latents", 3, 1) if variant == "plus" else 257
    return AdapterSpec(variant, clip_width, width, len(ids), tokens)


def _dim(state: Mapping[str, Any], key: str, ndim: int, axis: int) -> int:
    shape = tuple(getattr(state[key], "shape", ()))
    if len(shape) != ndim:
        raise ValueError(f"{key} is not {ndim}-dimensional")
    return int(shape[axis])


def read(file: ControlModelFile) -> dict[str, torch.Tensor]:
    """The file's tensors with flat keys (pickles through the restricted loader, nesting flattened)."""
    path = file.weights_path
    if path.lower().endswith(checkpoint_files.SAFETENSORS_EXTENSIONS):
        return checkpoint_files.read_state_dict(path, "cpu")
    state = checkpoint_files.read_pickle(path, "cpu")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelFileError(path, f"does not hold a dictionary of weights (found {type(state).__name__})")
    return {k: v for k, v in classify.flatten(state).items() if isinstance(v, torch.Tensor)}


def build(unet: torch.nn.Module, flat: Mapping[str, torch.Tensor]) -> tuple[AdapterSpec, IPAdapterWeights]:
    """The adapter's modules (CPU, float32 projection; layers in the file's dtype). ValueError when they do not fit
    what the keys promise. `unet` lends diffusers' conversion method; nothing of it is changed."""
    image_proj_sd, layers = split(flat)
    spec = describe(image_proj_sd, layers)
    if any(not v.is_floating_point() for v in flat.values()):
        raise ValueError("a weight is not floating point")
    # diffusers' own conversion, strict (every key and shape must fit the projection it builds). It sizes the
    # projection from the file's shapes: tried on the meta device first, so a file whose shapes promise a huge
    # module is refused before anything is allocated.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op": the point here
        unet._convert_ip_adapter_image_proj_to_diffusers(dict(image_proj_sd), low_cpu_mem_usage=False)
    image_proj = unet._convert_ip_adapter_image_proj_to_diffusers(dict(image_proj_sd), low_cpu_mem_usage=False)
    to_k, to_v = torch.nn.ModuleDict(), torch.nn.ModuleDict()
    for key, tensor in layers.items():
        layer_id, name = key.split(".")[:2]
        with torch.device("meta"):
            linear = torch.nn.Linear(tensor.shape[1], tensor.shape[0], bias=False)
        linear.load_state_dict({"weight": tensor}, strict=True, assign=True)
        (to_k if name == "to_k_ip" else to_v)[layer_id] = linear
    return spec, IPAdapterWeights(image_proj, to_k, to_v)


_cache: dict[str, LoadedIPAdapter] = {}
_lock = threading.RLock()
_load_lock = threading.Lock()


def _handle_name(file: ControlModelFile) -> str:
    return f"{MEMORY_GROUP}:{os.path.realpath(file.path)}"  # the same handle a ControlNet file would have


def _unloader(real_path: str):
    def unload() -> None:
        with _lock:
            _cache.pop(real_path, None)
    return unload


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def load(file: ControlModelFile, unet: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> LoadedIPAdapter:
    """The IP-Adapter of `file` on `device` in `dtype`, from the cache while the file is unchanged.
    ControlModelError names the adapter when the file cannot be used."""
    device = torch.device(device)
    real = os.path.realpath(file.path)
    handle = _handle_name(file)
    with _load_lock:
        try:
            key = _stat_key(file.weights_path)
        except OSError as e:
            raise _error(file, f"the file is gone or unreadable ({e.strerror or e})") from e
        with _lock:
            loaded = _cache.get(real)
        fresh = loaded is None or loaded.file_key != key or handle not in memory.owner
        if fresh:
            memory.owner.unload(handle)
            try:
                spec, module = build(unet, read(file))
            except ModelFileError as e:
                raise _error(file, e.reason) from e
            except (ValueError, KeyError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as e:
                raise _error(file, f"does not fit an IP-Adapter: {str(e).splitlines()[0][:400]}") from e
            module.eval().requires_grad_(False)
            loaded = LoadedIPAdapter(file, spec, module, torch.device("cpu"), torch.float32, key)
            with _lock:
                _cache[real] = loaded
            log.info("loaded IP-Adapter %s (%s, %s)", file.name, spec.variant, file.family or "family unknown")
        module = loaded.module
        if fresh or loaded.device != device or loaded.dtype != dtype:  # fresh: float32 projection, file-dtype layers
            size = memory.module_size_bytes(module) * torch.tensor([], dtype=dtype).element_size() // 4
            memory.owner.make_room(size, device, keep=[handle])
            memory.owner.run_with_oom_retry(lambda: module.to(device=device, dtype=dtype), device, keep=[handle])
            loaded.device, loaded.dtype = device, dtype
        memory.owner.register(handle, memory.module_size_bytes(loaded.module), _unloader(real), device,
                              group=MEMORY_GROUP)
        memory.owner.touch(handle)
        memory.owner.trim_group(MEMORY_GROUP, loading.cache_size())
    loaded.file = file
    return loaded


# --- the UNet side ---------------------------------------------------------------------------------------------


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """The processor names of the UNet's cross-attention layers, in the order IP-Adapter files number them."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")
            and "motion_modules" not in name]


def check_fits(adapter: LoadedIPAdapter, unet: torch.nn.Module) -> None:
    """ControlModelError unless every cross-attention layer of `unet` has its image-token projections of the
    right shape (those of the layer's text key projection)."""
    names = cross_attention_layers(unet)
    if len(names) != adapter.spec.layers:
        raise _error(adapter.file, f"made for a UNet with {adapter.spec.layers} cross-attention layers; the loaded "
                                   f"model's UNet has {len(names)}")
    for i, name in enumerate(names):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        wanted = tuple(attn.to_k.weight.shape)
        got = tuple(adapter.module.to_k_ip[str(2 * i + 1)].weight.shape)
        if got != wanted:
            raise _error(adapter.file, f"layer {2 * i + 1} projects {got[1]} -> {got[0]} channels where the loaded "
                                       f"model's UNet ({name}) takes {wanted[1]} -> {wanted[0]}")


class Installation:
    """IP-Adapter processors and image projection on one UNet (see the module docstring)."""

    def __init__(self, unet: torch.nn.Module, adapters: list[LoadedIPAdapter]):
        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        stale = getattr(unet, "_sd_ip_adapter", None)
        if stale is not None:  # a job that never reached its end (it should not happen): undo it first
            log.warning("IP-Adapter: removing processors a previous job left on the UNet")
            stale.remove()
        if unet.encoder_hid_proj is not None or unet.config.encoder_hid_dim_type is not None:
            raise _error(adapters[0].file, "the loaded model's UNet already projects its text context "
                                           f"({unet.config.encoder_hid_dim_type}); IP-Adapter cannot be added to it")
        self.unet = unet
        self.saved = dict(unet.attn_processors)
        self.scales = [0.0] * len(adapters)
        cross = cross_attention_layers(unet)
        self.processors: list[Any] = []
        replaced = dict(self.saved)
        for i, name in enumerate(cross):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            with torch.device("meta"):  # its own random projections are replaced by the adapters' below
                processor = IPAdapterAttnProcessor2_0(attn.to_k.out_features, attn.to_k.in_features,
                                                      num_tokens=[a.spec.tokens for a in adapters],
                                                      scale=list(self.scales))
            processor.to_k_ip = torch.nn.ModuleList([a.module.to_k_ip[str(2 * i + 1)] for a in adapters])
            processor.to_v_ip = torch.nn.ModuleList([a.module.to_v_ip[str(2 * i + 1)] for a in adapters])
            replaced[name] = processor
            self.processors.append(processor)
        unet.set_attn_processor(replaced)  # before the projection, whose Resampler has attention layers too
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([a.module.image_proj for a in adapters])
        # as diffusers' loader does: FrozenDict takes the attribute, the forward reads it
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        unet._sd_ip_adapter = self
        bump_structure_version(unet)

    def set_scales(self, scales: list[float]) -> None:
        if scales == self.scales:
            return
        self.scales = list(scales)
        for processor in self.processors:
            processor.scale = list(scales)

    def remove(self) -> None:
        """The UNet's own processors and (no) encoder_hid_proj back; nothing when already removed."""
        unet = self.unet
        if getattr(unet, "_sd_ip_adapter", None) is not self:
            return
        # the projection first: a plus adapter's Resampler has attention layers of its own, which would count
        del unet.encoder_hid_proj  # out of the module's children, then the plain attribute it was
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        unet.set_attn_processor(dict(self.saved))
        unet._sd_ip_adapter = None
        bump_structure_version(unet)


# --- units -----------------------------------------------------------------------------------------------------


@dataclass
class PreparedIPAdapter:
    """One unit ready to run: the adapter, the UNet it goes on and the picture's embeddings."""

    adapter: LoadedIPAdapter
    encoder: clip_vision.EncoderFile
    unet: torch.nn.Module
    cond: torch.Tensor  # [1, 1, width] or [1, 1, tokens, width], on the UNet's device in its dtype
    uncond: torch.Tensor
    control: loading.LoadedControl = field(init=False)

    def __post_init__(self) -> None:
        a = self.adapter
        self.control = loading.LoadedControl(a.file, "ip_adapter", a.file.family, a.module, a.device, a.dtype)

    def embeds(self, uncond_rows: torch.Tensor) -> torch.Tensor:
        """The embedding for every row of an evaluation: the negative one where `uncond_rows`."""
        mask = uncond_rows.to(self.cond.device).view(-1, *([1] * (self.cond.ndim - 1)))
        return torch.where(mask, self.uncond, self.cond)


def choose_encoder(adapter: LoadedIPAdapter, module: str) -> clip_vision.EncoderFile:
    """The CLIP vision encoder for `adapter` under preprocessor `module` (see the module docstring)."""
    spec = adapter.spec
    wanted_kind = ENCODER_FOR_MODULE.get(module)

    def width(e: clip_vision.EncoderFile) -> int:
        return e.hidden_size if spec.uses_hidden_states else e.projection_dim

    encoders = clip_vision.list_encoders()
    fitting = [e for e in encoders if width(e) == spec.clip_width]
    if fitting and wanted_kind:
        # the preprocessor's encoder, else one of no known kind (a custom encoder); a known other one is a mix-up
        chosen = [e for e in fitting if e.kind == wanted_kind] or [e for e in fitting if e.kind is None]
        if chosen:
            return chosen[0]
        other = fitting[0].kind
        raise _error(adapter.file, f"reads {spec.encoder_output} of {other} ({spec.clip_width} wide), but the "
                                   f"preprocessor {module} encodes with {wanted_kind}; choose {_module_for(other)} "
                                   "or ip-adapter-auto")
    if fitting:
        return fitting[0]
    folders = ", ".join(_shown(d) for d in clip_vision.model_dirs()) or "models/clip_vision"
    kinds = sorted({k for (h, p), k in clip_vision.KNOWN.items()
                    if (h if spec.uses_hidden_states else p) == spec.clip_width})
    hint = f" ({kinds[0]}; the extension names it {clip_vision.EXTENSION_FILES[kinds[0]]})" if kinds else ""
    raise _error(adapter.file, f"no CLIP vision encoder with {spec.clip_width}-wide {spec.encoder_output}{hint} in "
                               f"{folders}")


def _module_for(kind: str | None) -> str:
    return next((m for m, k in ENCODER_FOR_MODULE.items() if k == kind), "ip-adapter-auto")


def _shown(folder: str) -> str:
    from modules import paths

    try:
        relative = os.path.relpath(folder, paths.data_path)
    except ValueError:
        return os.path.basename(folder)
    return relative if not relative.startswith("..") else os.path.basename(folder)


def prepare(file: ControlModelFile, module: str, picture: np.ndarray, model: Any, device: torch.device,
            low_vram: bool = False) -> PreparedIPAdapter:
    """An IP-Adapter unit of `model` (a loaded checkpoint) ready to run: adapter loaded and fitted to its UNet,
    the picture (RGB uint8) encoded. ControlModelError names what cannot be used."""
    unet = model.unet
    dtype = unet.dtype
    loading.check_family(file, model.spec.family)
    adapter = load(file, unet, device, dtype)
    check_fits(adapter, unet)
    encoder_file = choose_encoder(adapter, module)
    try:
        encoder = clip_vision.load(encoder_file, torch.device("cpu") if low_vram else device, dtype)
    except ModelFileError as e:
        raise _error(file, f"its CLIP vision encoder {e}") from e
    cond, uncond = clip_vision.encode(encoder, picture, adapter.spec.uses_hidden_states, device)
    return PreparedIPAdapter(adapter, encoder_file, unet, cond.to(device, dtype), uncond.to(device, dtype))


class IPAdapterJob:
    """The IP-Adapter units of one job (ActiveUnits whose `ip` is a PreparedIPAdapter), called by the ControlNet
    hook at every UNet evaluation. Installs on the first evaluation that needs it; `close` removes."""

    def __init__(self, units: list[Any]):
        self.units = [u for u in units if u.unit.weight != 0]  # weight 0: nothing installed, nothing changed
        self.installation: Installation | None = None

    def __call__(self, ctx: UNetHookContext, active: list[Any]) -> None:
        if not self.units:
            return
        active_ids = {id(u) for u in active}
        scales = [float(u.unit.weight) if id(u) in active_ids else 0.0 for u in self.units]
        if self.installation is None:
            if not any(scales):
                return  # not needed yet: the UNet stays as it is
            self.installation = Installation(self.units[0].ip.unet, [u.ip.adapter for u in self.units])
        self.installation.set_scales(scales)
        inp = ctx.input
        added = dict(inp.added or {})
        added["image_embeds"] = [u.ip.embeds(ctx.uncond_rows) for u in self.units]
        added[SCALES_KEY] = tuple(scales)
        inp.added = added

    def close(self) -> None:
        if self.installation is not None:
            self.installation.remove()
            self.installation = None


def unload_all() -> None:
    with _lock:
        files = [entry.file for entry in _cache.values()]
    for file in files:
        memory.owner.unload(_handle_name(file))
    clip_vision.unload_all()
