"""ControlNet and T2I-Adapter units at work in a generation: preparing each unit's control picture, and the UNet
hook that turns them into residuals and adapter features at every step.

Semantics follow sd-webui-controlnet:
- the control picture is the unit's image (or the img2img input), run through the preprocessor at the processor
  resolution (Pixel Perfect computes it from the generation size), then fitted to the size of each sampling pass
  with the unit's resize mode (so hires fix gets a control picture at its own size);
- a unit acts while the run's progress (step / steps) lies inside [guidance start, guidance end];
- control modes: "Balanced" scales every residual by the weight, on both the prompt's and the negative prompt's
  rows; "My prompt is more important" also scales layer i of n by 0.825^(n-1-i) (deep layers keep more of the
  control than shallow ones); "ControlNet is more important" does the same and applies the control to the prompt's
  rows only, so classifier-free guidance amplifies it. In the hires pass the layer scaling is always on, as the
  extension does;
- the extension's soft scaling has 13 factors for SD1's 13 residuals; for SDXL's 10 (and adapters' 4) this engine
  uses the same rule over n, so the middle block always keeps the full weight.
Weight 0, or a step outside every unit's window, gives the UNet no residuals at all: the same call as without
ControlNet, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modules.controlnet import hints, loading, preprocessors
from modules.controlnet.units import ControlMode, ControlNetUnit, HiResFixOption, ResizeMode, UnitError
from modules.engine.unet_call import UNetHookContext, add_residual, add_residual_list
from modules.scripts import RequestRefused

log = logging.getLogger(__name__)
SOFT_INJECTION_BASE = 0.825


class ControlUnitError(RequestRefused):
    """A unit that cannot run; the message starts with "ControlNet N:". The job fails with it."""


@dataclass
class ActiveUnit:
    index: int
    unit: ControlNetUnit
    control: loading.LoadedControl
    detected: np.ndarray  # HxWx3 uint8: the preprocessor's output (what the detected-map preview shows)
    mask: np.ndarray | None = None  # HxW uint8, 255 = masked; inpaint units only
    resolution: int | None = None  # the processor resolution used
    thresholds: tuple[float | None, float | None] = (None, None)
    ip: Any = None  # IP-Adapter units: the ip_adapter.PreparedIPAdapter (adapter, UNet, picture's embeddings)
    _hints: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _features: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"ControlNet {self.index}"

    @property
    def is_ip_adapter(self) -> bool:
        return self.control.kind == "ip_adapter"

    def hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The control picture at `height` x `width` pixels: [1, C, H, W] in [0, 1] (inpaint: -1 where masked)."""
        key = (height, width)
        if key not in self._hints:
            picture = hints.fit(self.detected, width, height, self.unit.resize_mode).astype(np.float32) / 255.0
            if self.mask is not None:
                mask = hints.fit(self.mask[..., None], width, height, self.unit.resize_mode)[..., 0]
                picture[mask > 127] = -1.0
            tensor = torch.from_numpy(picture).permute(2, 0, 1).unsqueeze(0)
            channels = int(getattr(self.control.model.config, "in_channels", 3)) if self.is_adapter else 3
            if channels == 1:  # sketch-type adapters read one grey channel
                tensor = tensor.mean(dim=1, keepdim=True)
            self._hints.clear()  # one size at a time (the first pass, then hires)
            self._hints[key] = tensor.to(device=device, dtype=dtype)
        return self._hints[key]

    @property
    def is_adapter(self) -> bool:
        return self.control.kind == "t2i_adapter"

    def control_embedding(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The ControlNet's embedding of the control picture ([1, C, h, w]): the same at every step, so computed
        once per size instead of inside every ControlNet call (see `split_cond_embedding`)."""
        key = (height, width)
        if key not in self._features:
            model = self.control.model
            with torch.no_grad():
                embedded = model._sd_cond_embedding(self.hint(height, width, device, self.control.dtype))
            self._features.clear()
            self._features[key] = [embedded.detach()]
        return self._features[key][0]

    def adapter_features(self, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
        """A T2I-Adapter's features do not depend on the latents: computed once per size."""
        key = (height, width)
        if key not in self._features:
            model = self.control.model
            with torch.no_grad():
                features = model(self.hint(height, width, device, self.control.dtype))
            self._features.clear()
            self._features[key] = [f.detach() for f in features]
        return self._features[key]


def _default(slider: preprocessors.Slider | None, value: float) -> float | None:
    """The extension's rule: a value outside the slider's range (its API sends -1) means the default."""
    if slider is None:
        return None
    if value is None or not slider.minimum <= value <= slider.maximum:
        return slider.value
    return value


def _image_for(unit: ControlNetUnit, index: int, p: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB picture, mask or None) of a unit: its own upload, else the img2img input (and the img2img mask)."""
    images = unit.rgba_images()
    if images:
        picture = images[0]
        mask = picture[:, :, 3] if picture[:, :, 3].any() else None
        return np.ascontiguousarray(picture[:, :, :3]), mask
    init = getattr(p, "init_images", None)
    if not init:
        raise ControlUnitError(f"ControlNet {index}: no input image; upload one to the unit (or use img2img, "
                               "where the unit reads the img2img picture)")
    picture = np.asarray(init[0].convert("RGB"))
    mask = None
    image_mask = getattr(p, "image_mask", None)
    if image_mask is not None:
        mask = np.asarray(image_mask.convert("L").resize(init[0].size))
    return picture, mask


def prepare(units: list[ControlNetUnit], p: Any, model: Any) -> list[ActiveUnit]:
    """The enabled units of a request, loaded and preprocessed; ControlUnitError names the first that cannot run."""
    active = []
    for index, unit in enumerate(units):
        if not unit.enabled:
            continue
        try:
            active.append(_prepare_one(index, unit, p, model, model.device))
        except (UnitError, preprocessors.UnknownPreprocessor, preprocessors.MissingWeights,
                loading.ControlModelError) as e:
            message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            if message.startswith(f"ControlNet {index}:"):
                raise ControlUnitError(message) from None
            raise ControlUnitError(f"ControlNet {index}: {message}") from None
    return active


def _prepare_one(index: int, unit: ControlNetUnit, p: Any, model: Any, device: torch.device) -> ActiveUnit:
    from modules.controlnet import files

    if not unit.uses_model:
        raise ControlUnitError(f"ControlNet {index}: no model chosen (module {unit.module!r} alone does nothing "
                               "to the picture)")
    model_file = files.find(unit.model)
    if model_file is None:
        raise ControlUnitError(f"ControlNet {index}: model {unit.model!r} not found (refresh the model list, or "
                               "put the file in models/ControlNet)")
    if model_file.kind not in (*loading.LOADABLE, "ip_adapter"):
        raise ControlUnitError(f"ControlNet {index}: {model_file.name} is a {model_file.kind} model, which this "
                               "version does not run")
    loading.check_family(model_file, model.spec.family)
    preprocessor = preprocessors.get(unit.module)
    picture, mask = _image_for(unit, index, p)
    if model_file.kind == "ip_adapter":
        return _prepare_ip_adapter(index, unit, model_file, preprocessor.name, picture, model, device)
    resolution = None
    if preprocessor.resolution is not None:
        if unit.pixel_perfect:
            resolution = hints.pixel_perfect_resolution(picture, p.height, p.width, unit.resize_mode)
        else:
            resolution = int(_default(preprocessor.resolution, unit.processor_res))
    a = _default(preprocessor.slider_a, unit.threshold_a)
    b = _default(preprocessor.slider_b, unit.threshold_b)
    detected = preprocessors.run(unit.module, picture, resolution or 512, a, b)
    if detected.ndim == 2:
        detected = np.stack([detected] * 3, axis=-1)
    dtype = model.unet.dtype
    control = loading.load(model_file, torch.device("cpu") if unit.low_vram else device, dtype)
    loading.check_family(control, model.spec.family)
    return ActiveUnit(index, unit, control, np.ascontiguousarray(detected[:, :, :3]),
                      mask if unit.is_inpaint else None, resolution, (a, b))


def _prepare_ip_adapter(index: int, unit: ControlNetUnit, model_file: Any, module: str, picture: np.ndarray,
                        model: Any, device: torch.device) -> ActiveUnit:
    """An IP-Adapter unit: the preprocessor's picture (the IP-Adapter preprocessors hand it on) becomes CLIP image
    embeddings (modules/controlnet/ip_adapter.py). It draws no detected map, as in the extension."""
    from dataclasses import replace

    from modules.controlnet import ip_adapter

    detected = np.ascontiguousarray(preprocessors.run(module, picture)[:, :, :3])
    prepared = ip_adapter.prepare(model_file, module, detected, model, device, low_vram=unit.low_vram)
    return ActiveUnit(index, replace(unit, save_detected_map=False), prepared.control, detected, ip=prepared)


def layer_scales(n: int, soft: bool) -> list[float]:
    return [SOFT_INJECTION_BASE ** float(n - 1 - i) for i in range(n)] if soft else [1.0] * n


def split_cond_embedding(model: torch.nn.Module) -> None:
    """Once per loaded ControlNet: its conditioning embedding (the small network over the control picture) moves to
    `_sd_cond_embedding` and an identity takes its place, so the ControlNet takes the embedding as its
    `controlnet_cond` (diffusers adds `controlnet_cond_embedding(controlnet_cond)` to the latents' first
    features). At 1024x1024 that embedding runs convolutions over the full-size picture; computing it once per job
    instead of once per step and per batch row is what this saves."""
    if not hasattr(model, "_sd_cond_embedding"):
        model._sd_cond_embedding = model.controlnet_cond_embedding
        model.controlnet_cond_embedding = torch.nn.Identity()


def _controlnet_forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                        hint: torch.Tensor, layer_weights: torch.Tensor,
                        **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The ControlNet's residuals, each scaled by its column of `layer_weights` ([rows, layers]: the unit's
    weight per row times the layer's soft-injection factor). The scaling is part of the call, so a CUDA graph of it
    replays the scaling too, and a new weight is a new input value, never a new capture."""
    down, mid = model(x, t, encoder_hidden_states=context, controlnet_cond=hint, conditioning_scale=1.0,
                      return_dict=False, **kwargs)
    weights = layer_weights.to(mid.dtype)[:, :, None, None, None]
    return [d * weights[:, i] for i, d in enumerate(down)], mid * weights[:, -1]


@dataclass
class ControlNetHook:
    """The UNet hook of one job's units (modules.engine.unet_call.UNetHook)."""

    units: list[ActiveUnit]
    latent_scale: int  # pixels per latent cell
    use_graphs: bool = True
    hires: bool = False  # set by the script before the hires pass
    hires_enabled: bool = False
    calls: int = 0  # UNet evaluations that received control (tests and benchmarks read it)
    ip_adapters: Any = None  # ip_adapter.IPAdapterJob of the IP-Adapter units, if any

    def __post_init__(self) -> None:
        ip_units = [u for u in self.units if u.is_ip_adapter]
        if ip_units:
            from modules.controlnet import ip_adapter

            self.ip_adapters = ip_adapter.IPAdapterJob(ip_units)

    def close(self) -> None:
        """Undo what the job changed in the UNet (IP-Adapter's processors); called when the job ends, even failed."""
        if self.ip_adapters is not None:
            self.ip_adapters.close()

    def _runs_in_this_pass(self, unit: ControlNetUnit) -> bool:
        if not self.hires_enabled:
            return True
        if unit.hr_option == HiResFixOption.LOW_RES_ONLY:
            return not self.hires
        if unit.hr_option == HiResFixOption.HIGH_RES_ONLY:
            return self.hires
        return True

    def _active(self, ctx: UNetHookContext) -> list[ActiveUnit]:
        progress = ctx.progress
        return [u for u in self.units
                if u.unit.weight != 0 and u.unit.guidance_start <= progress <= u.unit.guidance_end
                and self._runs_in_this_pass(u.unit)]

    def _layer_weights(self, unit: ActiveUnit, ctx: UNetHookContext, layers: int) -> torch.Tensor:
        """[rows, layers] float32: the unit's weight (0 on negative-prompt rows when the control goes to the prompt
        only) times each layer's soft-injection factor."""
        cond_only = (unit.unit.control_mode == ControlMode.CONTROL
                     or bool(getattr(unit.control.model.config, "global_pool_conditions", False)))
        rows = torch.full((ctx.uncond_rows.shape[0], 1), float(unit.unit.weight), dtype=torch.float32)
        if cond_only:
            rows[ctx.uncond_rows.cpu()] = 0
        scales = torch.tensor(layer_scales(layers, self._soft(unit)), dtype=torch.float32)[None, :]
        return (rows * scales).to(ctx.input.x.device, non_blocking=True)

    def _soft(self, unit: ActiveUnit) -> bool:
        return unit.unit.control_mode != ControlMode.BALANCED or self.hires

    def __call__(self, ctx: UNetHookContext) -> None:
        units = self._active(ctx)
        if self.ip_adapters is not None:  # image tokens and IP scales (0 outside a unit's window)
            self.ip_adapters(ctx, units)
            units = [u for u in units if not u.is_ip_adapter]
        if not units:
            return
        self.calls += 1
        inp = ctx.input
        height, width = inp.x.shape[-2] * self.latent_scale, inp.x.shape[-1] * self.latent_scale
        rows = inp.x.shape[0]
        # A replayed graph's outputs are overwritten by its next replay: with several units (maybe sharing a
        # model) the sums are built in fresh tensors; a lone unit's outputs go to the UNet as they are.
        alone = len(units) == 1
        for unit in units:
            if unit.is_adapter:
                features = unit.adapter_features(height, width, inp.x.device)
                weights = self._layer_weights(unit, ctx, len(features)).to(features[0].dtype)
                scaled = [f.expand(rows, -1, -1, -1) * weights[:, i, None, None, None]
                          for i, f in enumerate(features)]
                inp.adapter_features = add_residual_list(inp.adapter_features, scaled)
                continue
            down, mid = self._run_controlnet(unit, ctx, height, width)
            if not alone and inp.down_residuals is None:
                down, mid = [d.clone() for d in down], mid.clone()
            inp.down_residuals = add_residual_list(inp.down_residuals, down)
            inp.mid_residual = add_residual(inp.mid_residual, mid)

    def _run_controlnet(self, unit: ActiveUnit, ctx: UNetHookContext, height: int,
                        width: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        inp = ctx.input
        model = unit.control.model
        device = inp.x.device
        if unit.unit.low_vram:
            model.to(device)
        dtype = unit.control.dtype
        split_cond_embedding(model)
        hint = unit.control_embedding(height, width, device).expand(inp.x.shape[0], -1, -1, -1)
        kwargs: dict[str, Any] = {}
        if inp.added and "time_ids" in inp.added:  # SDXL: the same size and pooled-text conditioning
            kwargs["added_cond_kwargs"] = {k: inp.added[k].to(dtype) for k in ("text_embeds", "time_ids")}
        layers = len(model.controlnet_down_blocks) + 1
        args = (inp.x.to(dtype), inp.t, inp.context.to(dtype), hint, self._layer_weights(unit, ctx, layers))
        try:
            with torch.no_grad():
                if self.use_graphs and device.type == "cuda" and not unit.unit.low_vram:
                    from modules.engine.unet_graph import graphed_call

                    down, mid = graphed_call(model, _controlnet_forward, args, kwargs)
                else:
                    down, mid = _controlnet_forward(model, *args, **kwargs)
        finally:
            if unit.unit.low_vram:
                model.to("cpu")
        return down, mid


def infotext_params(units: list[ActiveUnit]) -> dict[str, str]:
    """`ControlNet N: "Module: ..., Model: name [hash], ..."` for each unit that ran, with the values used."""
    out = {}
    for unit in units:
        written = ControlNetUnit(
            enabled=True, module=preprocessors.get(unit.unit.module).name if unit.unit.module else "none",
            model=unit.control.file.title, weight=unit.unit.weight, resize_mode=unit.unit.resize_mode,
            processor_res=unit.resolution if unit.resolution is not None else unit.unit.processor_res,
            threshold_a=unit.thresholds[0] if unit.thresholds[0] is not None else unit.unit.threshold_a,
            threshold_b=unit.thresholds[1] if unit.thresholds[1] is not None else unit.unit.threshold_b,
            guidance_start=unit.unit.guidance_start, guidance_end=unit.unit.guidance_end,
            pixel_perfect=unit.unit.pixel_perfect, control_mode=unit.unit.control_mode)
        out[unit.label] = written.infotext()
    return out


__all__ = ["ActiveUnit", "ControlNetHook", "ControlUnitError", "ResizeMode", "infotext_params", "layer_scales",
           "prepare"]
