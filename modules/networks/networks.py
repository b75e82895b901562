"""Load LoRA-family files and apply them to the loaded model through its patcher (A1111's `networks` module).

`load_networks(names, te_multipliers, unet_multipliers, dyn_dims)` makes exactly those networks the applied set:
networks no longer asked for are restored, unchanged ones are left alone, and the checkpoint is never reloaded.
Parsed files stay in RAM (`lora_in_memory_limit` of them, least recently used dropped first). A file that does not
fit the model (another family, keys that match nothing, shapes that differ) is refused with its reason; the
job goes on without it and the reason is shown beside the picture.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from modules.models.checkpoint_files import ModelFileError, read_state_dict
from modules.models.patcher import WeightPatch, patcher_for
from modules.networks import files, keys, module_types

log = logging.getLogger(__name__)

OWNER = "lora"
_FAMILY_LABEL = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL"}


class NetworkRefused(Exception):
    """A network that cannot be applied to the loaded model; the message says why, without paths."""


@dataclass
class Network:
    """One parsed file for one model layout: its modules by target, ready to patch."""

    name: str
    network_on_disk: files.NetworkOnDisk
    mtime: float
    modules: dict[keys.Target, module_types.NetworkModule]
    layout: tuple  # the model layout it was matched against
    unmatched: int = 0
    # set per activation (A1111's attribute names)
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    mentioned_name: str | None = None
    size: int = 0
    bias_targets: set[keys.Target] = field(default_factory=set)  # layers whose bias the file changes too


loaded_networks: list[Network] = []
networks_in_memory: OrderedDict[tuple, Network] = OrderedDict()
errors: dict[str, str] = {}  # name -> why it was not applied, for the last activation


def _layout(model) -> tuple:
    return (model.spec.family, model.spec.variant, id(model.unet))


def _key_map(model) -> dict[str, keys.Target]:
    cached = getattr(model, "_network_key_map", None)
    if cached is None:
        cached = keys.build_key_map(model)
        model._network_key_map = cached
    return cached


def _check_family(on_disk: files.NetworkOnDisk, model) -> None:
    loaded = _FAMILY_LABEL.get(model.spec.family, "Unknown")
    if on_disk.sd_version not in ("Unknown", loaded):
        raise NetworkRefused(f"made for {on_disk.sd_version}, the loaded model is {loaded}")


def _target_weight(model, target: keys.Target) -> torch.Tensor:
    return patcher_for(model).original(f"{target.component}.{target.module_name}.weight")


def parse_network(on_disk: files.NetworkOnDisk, model) -> Network:
    """Read the file (safetensors, or pickles through the restricted loader) and match it to the model."""
    if on_disk.error:
        raise NetworkRefused(on_disk.error)
    _check_family(on_disk, model)
    try:
        state = read_state_dict(on_disk.filename)
    except ModelFileError as e:
        raise NetworkRefused(e.reason) from e
    # Kept where the weights are: a switch between cached networks then copies nothing from RAM (on a GPU,
    # 1400 small host-to-device copies per SDXL switch were most of its time).
    device = model.device
    if device.type != "cpu":
        state = {k: v.to(device, non_blocking=True) for k, v in state.items()}
    table = _key_map(model)
    layers, unmatched = keys.group_by_layer(list(state), module_types.SUFFIXES, table)
    built: dict[keys.Target, module_types.NetworkModule] = {}
    wrong_shape: list[str] = []
    bias_targets: set[keys.Target] = set()
    for layer, by_suffix in layers.items():
        module = module_types.build_module({suffix: state[key] for suffix, key in by_suffix.items()})
        if module is None:
            unmatched.extend(by_suffix.values())
            continue
        target = table[layer]
        weight = _target_weight(model, target)
        try:
            # Shapes only (meta tensors hold no data): a shape error surfaces before anything is patched.
            meta = torch.device("meta")
            has_bias = module.delta(torch.empty(weight.shape, device=meta), device=meta).bias is not None
        except module_types.ShapeMismatch as e:
            wrong_shape.append(f"{layer}: {e}")
            continue
        built[target] = module
        if has_bias:
            bias_targets.add(target)
    loaded = _FAMILY_LABEL.get(model.spec.family, "Unknown")
    if wrong_shape:
        guess = files.family_hint(state)
        made_for = f"made for {guess}, " if guess not in ("Unknown", loaded) else ""
        raise NetworkRefused(f"{made_for}its layers do not fit the loaded {loaded} model "
                             f"({len(wrong_shape)} of different shape, e.g. {wrong_shape[0]})")
    if not built:
        guess = files.family_hint(state)
        made_for = f" (it looks made for {guess})" if guess not in ("Unknown", loaded) else ""
        raise NetworkRefused(f"none of its {len(state)} keys matches a layer of the loaded {loaded} model{made_for}")
    if unmatched:
        log.info("LoRA %s: %d keys match no layer of the loaded model and are ignored", on_disk.name, len(unmatched))
    size = sum(m.size_bytes() for m in built.values())
    return Network(on_disk.name, on_disk, on_disk.mtime, built, _layout(model), len(unmatched), size=size,
                   bias_targets=bias_targets)


def _memory_limit() -> int:
    from modules import shared

    try:
        return max(0, int(shared.opts.data.get("lora_in_memory_limit", 0)))
    except (TypeError, ValueError):
        return 0


def _cached(on_disk: files.NetworkOnDisk, model) -> Network:
    key = (on_disk.filename, on_disk.mtime, _layout(model))
    network = networks_in_memory.get(key)
    if network is None:
        network = parse_network(on_disk, model)
    networks_in_memory[key] = network
    networks_in_memory.move_to_end(key)
    return network


def _trim_memory(keep: list[Network]) -> None:
    """Keep the applied networks plus up to `lora_in_memory_limit` others."""
    limit = _memory_limit()
    kept_ids = {id(n) for n in keep}
    spare = [k for k, n in networks_in_memory.items() if id(n) not in kept_ids]
    for key in spare[: max(0, len(spare) - limit)]:
        del networks_in_memory[key]


def _patches(network: Network, model) -> list[WeightPatch]:
    patcher = patcher_for(model)
    out: list[WeightPatch] = []
    for target, module in network.modules.items():
        strength = network.te_multiplier if target.is_text_encoder else network.unet_multiplier
        if strength == 0:
            continue
        prefix = f"{target.component}.{target.module_name}"
        identity = (network.network_on_disk.filename, network.mtime, target, network.dyn_dim)
        dyn = network.dyn_dim

        def weight_delta(original: torch.Tensor, module=module, dyn=dyn) -> torch.Tensor:
            return module.delta(original, dyn_dim=dyn).weight

        factors = _low_rank_factors(module, patcher.parameter(f"{prefix}.weight").device) if dyn is None else None
        accumulate = None
        if factors is not None:
            def accumulate(total: torch.Tensor, s: float, up=factors[0], down=factors[1]) -> None:
                total.view(total.shape[0], -1).addmm_(up, down, alpha=s)

        out.append(WeightPatch(f"{prefix}.weight", strength, weight_delta, identity, accumulate))
        bias_key = f"{prefix}.bias"
        if target in network.bias_targets:
            weight_key = f"{prefix}.weight"

            def bias_delta(original: torch.Tensor, module=module, weight_key=weight_key) -> torch.Tensor:
                return module.delta(patcher.original(weight_key).to(original.device), bias=original).bias

            out.append(WeightPatch(bias_key, strength, bias_delta, identity + ("bias",)))
    return out


def _low_rank_factors(module: module_types.NetworkModule, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale * up, down) as float32 matrices on `device` when the change is exactly their product (a LoRA or
    LoCon without Tucker core or DoRA), so a patch is one addmm; made once per cached network."""
    if not isinstance(module, module_types.LoRAModule) or module.mid is not None or module.dora_scale is not None:
        return None
    if math.prod(module.up.shape[2:]) != 1:
        return None
    cached = getattr(module, "_factors32", None)
    if cached is None or cached[0].device != device:
        up = module.up.to(device, torch.float32).reshape(module.up.shape[0], -1) * module.scale
        down = module.down.to(device, torch.float32).reshape(module.down.shape[0], -1)
        cached = (up, down)
        module._factors32 = cached
    return cached


def load_networks(names: list[str], te_multipliers: list[float] | None = None,
                  unet_multipliers: list[float] | None = None, dyn_dims: list[int | None] | None = None,
                  model=None) -> dict[str, str]:
    """Apply exactly these networks (A1111's signature). Returns {name: reason} for those not applied."""
    from modules import shared

    model = model if model is not None else shared.sd_model
    errors.clear()
    loaded_networks.clear()
    if model is None:
        return {}
    wanted: list[Network] = []
    for i, name in enumerate(names):
        on_disk = files.find(name)
        if on_disk is None:
            errors[name] = "not found in the LoRA folders"
            continue
        try:
            network = _cached(on_disk, model)
        except NetworkRefused as e:
            errors[name] = str(e)
            continue
        network.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        network.unet_multiplier = unet_multipliers[i] if unet_multipliers else network.te_multiplier
        network.dyn_dim = dyn_dims[i] if dyn_dims else None
        network.mentioned_name = name
        wanted.append(network)
    patches = [patch for network in wanted for patch in _patches(network, model)]
    patcher_for(model).set_patches(OWNER, patches)
    loaded_networks.extend(wanted)
    _trim_memory(wanted)
    for name, reason in errors.items():
        log.warning("LoRA %s not applied: %s", name, reason)
    return dict(errors)


def unload(model) -> None:
    """Take every network off `model` (the weights return to the checkpoint's, bit for bit)."""
    if model is not None and getattr(model, "patcher", None) is not None:
        model.patcher.set_patches(OWNER, [])
    loaded_networks.clear()
