"""Weight math of the LoRA family, one target layer at a time.

A LoRA-family file stores, per target layer, a few small tensors keyed by a suffix ("lora_up.weight",
"hada_w1_a", "diff", ...). `build_module` recognises the format from those suffixes and returns a
`NetworkModule`; its `delta(weight)` gives what to ADD to the original weight at strength 1, so that a patcher
computes `final = original + sum(strength_i * delta_i)`. No I/O and no knowledge of models here: the key mapping
decides which layer a group of tensors belongs to, the patcher applies the result.

Formats (the behaviour of kohya sd-scripts, LyCORIS, A1111's built-in Lora extension and ComfyUI):

- LoRA / LoCon (kohya `lora_up`/`lora_down`[/`lora_mid`], PEFT `lora_B`/`lora_A`, old diffusers `lora.up`/
  `lora.down`, diffusers `lora_linear_layer.up`/`.down`): dW = up @ down (Tucker: up x mid x down), times
  alpha / rank with rank = rows of down; no alpha means a scale of 1. `kind` is "locon" when the down (or mid)
  tensor carries a spatial kernel larger than 1x1, else "lora".
- LoHa: dW = (w1a @ w1b) * (w2a @ w2b) (Hadamard product), Tucker cores `hada_t1`/`hada_t2` optional;
  scale alpha / rank, rank = rows of w1b.
- LoKr: dW = kron(w1, w2), each factor stored whole or as a product of two (w2 optionally with a Tucker core);
  scale alpha / rank where rank is the inner size of a factorised part; 1 when both factors are stored whole.
- IA3: dW = W * w, w scaling each output channel (or each input channel when `on_input` is true).
- Full: dW = `diff`, db = `diff_b`.
- Any weight-changing kind may also carry a `diff_b`, which becomes the bias delta as is.

A result whose element count matches the target but whose layout differs (a Linear LoRA on a 1x1 conv, a conv
LoRA on a Linear, a flattened conv kernel) is reshaped to the target, provided the output dimension agrees.
Anything else raises `ShapeMismatch` naming both shapes.

DoRA (a `dora_scale` tensor next to a LoRA, LoHa or LoKr) follows ComfyUI's merge semantics: with
Wc = W + scale * dW_raw the decomposed weight is Wd = dora_scale * Wc / ||Wc||, the norm taken per output channel
(over every axis but 0) when dora_scale has the shape (out, 1, ...), or per input channel (over every axis but 1)
when it has the shape (1, in, ...), as kohya and LyCORIS train it. The delta returned is Wd - W, so strength s
gives W + s * (Wd - W): strength 1 is exactly the DoRA weight, strength 0 the original. Unlike ComfyUI's
output-axis branch (which takes the norm of W) the norm is always that of Wc, which is what DoRA trains; a
float32 epsilon keeps an all-zero channel finite.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "SUFFIXES",
    "FullModule",
    "IA3Module",
    "LoHaModule",
    "LoKrModule",
    "LoRAModule",
    "NetworkModule",
    "ShapeMismatch",
    "WeightDelta",
    "build_module",
]

Device = torch.device | str | None

# (up, down) suffix pairs of the LoRA naming schemes, kohya's first.
LORA_NAMINGS: tuple[tuple[str, str], ...] = (
    ("lora_up.weight", "lora_down.weight"),
    ("lora_B.weight", "lora_A.weight"),
    ("lora.up.weight", "lora.down.weight"),
    ("lora_linear_layer.up.weight", "lora_linear_layer.down.weight"),
)
LORA_MID = "lora_mid.weight"
HADA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
COMMON_KEYS = ("alpha", "dora_scale", "diff_b")

SUFFIXES: frozenset[str] = frozenset(
    [name for pair in LORA_NAMINGS for name in pair]
    + [LORA_MID, *HADA_KEYS, *LOKR_KEYS, *COMMON_KEYS, "diff", "weight", "on_input"]
)


class ShapeMismatch(ValueError):
    """The stored tensors cannot produce the target layer's weight (or bias) shape."""


@dataclass
class WeightDelta:
    weight: torch.Tensor | None  # dW at strength 1, shape of the target weight, float32
    bias: torch.Tensor | None  # db at strength 1, shape of the bias, float32


def _shape(t: torch.Tensor | torch.Size | Iterable[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def _f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _fit(delta: torch.Tensor, shape: torch.Size, what: str) -> torch.Tensor:
    """Give `delta` the target shape; only layouts that keep the output dimension may be reshaped."""
    if delta.shape == shape:
        return delta
    same_out = delta.dim() > 0 and len(shape) > 0 and delta.shape[0] == shape[0]
    if same_out and delta.numel() == math.prod(shape):
        return delta.reshape(shape)
    raise ShapeMismatch(f"{what} gives a delta of shape {_shape(delta)}, the target weight has shape {_shape(shape)}")


def _scalar(t: torch.Tensor | None) -> float | None:
    return None if t is None else float(t.reshape(-1)[0].item())


class NetworkModule(abc.ABC):
    """The stored tensors of one layer of one network file, and the weight change they mean."""

    kind: str = ""
    own_keys: frozenset[str] = frozenset()  # the suffixes this kind reads; the rest of a group is ignored

    def __init__(self, tensors: Mapping[str, torch.Tensor], own_keys: Iterable[str] | None = None):
        keys = self.own_keys if own_keys is None else frozenset(own_keys)
        # Only what this module reads is kept (and counted by size_bytes).
        self.tensors: dict[str, torch.Tensor] = {k: v for k, v in tensors.items() if k in keys}
        self.alpha: float | None = _scalar(self.tensors.get("alpha"))
        self.dora_scale: torch.Tensor | None = self.tensors.get("dora_scale")
        self.bias_diff: torch.Tensor | None = self.tensors.get("diff_b")

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by, or None when the format has no such scale."""
        return None

    @property
    def scale(self) -> float:
        if self.alpha is None or self.rank is None:
            return 1.0
        return self.alpha / self.rank

    @abc.abstractmethod
    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor | None:
        """dW before alpha scaling and DoRA, in float32 on `device`, shaped like `weight` (the float32 original)."""

    def delta(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        dyn_dim: int | None = None,
        device: Device = None,
    ) -> WeightDelta:
        if dyn_dim is not None and dyn_dim < 0:
            raise ValueError(f"dyn_dim must not be negative, got {dyn_dim}")
        dev = torch.device(device) if device is not None else weight.device
        original = _f32(weight, dev)
        try:
            dw = self._raw_delta(original, dev, dyn_dim)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # torch's own shape errors (matmul, kron, einsum) -> one error type
            stored = {k: _shape(v) for k, v in self.tensors.items()}
            raise ShapeMismatch(
                f"{self.kind} tensors {stored} cannot produce the target weight shape {_shape(weight)}: {exc}"
            ) from exc
        if dw is not None:
            dw = dw * self.scale
            if self.dora_scale is not None:
                dw = _dora_delta(original, dw, _f32(self.dora_scale, dev))
        return WeightDelta(weight=dw, bias=self._bias_delta(bias, dev))

    def _bias_delta(self, bias: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        if self.bias_diff is None:
            return None
        db = _f32(self.bias_diff, device)
        if bias is None:
            return db
        if db.numel() != bias.numel():
            raise ShapeMismatch(f"diff_b has shape {_shape(db)}, the target bias has shape {_shape(bias)}")
        return db.reshape(bias.shape)

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __repr__(self) -> str:
        shapes = {k: _shape(v) for k, v in self.tensors.items()}
        return f"{type(self).__name__}(kind={self.kind!r}, tensors={shapes})"


def _dora_delta(original: torch.Tensor, dw: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """Wd - W, with Wd = dora_scale * Wc / ||Wc|| and Wc = W + dw (see the module docstring)."""
    combined = original + dw
    axis = _dora_axis(original.shape, dora_scale)
    channels = combined.shape[axis]
    # The norm of each channel along `axis`, over all the other axes.
    norm = combined.transpose(0, axis).reshape(channels, -1).norm(dim=1)
    view = [1] * combined.dim()
    view[axis] = channels
    norm = norm.reshape(view) + torch.finfo(torch.float32).eps
    return combined * (dora_scale.reshape(view) / norm) - original


def _dora_axis(weight_shape: torch.Size, dora_scale: torch.Tensor) -> int:
    out = weight_shape[0]
    if dora_scale.dim() > 0 and dora_scale.shape[0] == out and dora_scale.numel() == out:
        return 0
    on_input_shape = dora_scale.dim() == 1 or dora_scale.shape[0] == 1
    if len(weight_shape) >= 2 and on_input_shape and dora_scale.numel() == weight_shape[1]:
        return 1
    raise ShapeMismatch(
        f"dora_scale has shape {_shape(dora_scale)}, which fits neither the output nor the input channels "
        f"of the target weight shape {_shape(weight_shape)}"
    )


def _tucker(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Rebuild a (out, in, *kernel) weight from a Tucker core (r1, r2, *kernel).

    `left` is (r1, out) and `right` is (r2, in): core axis 0 pairs with the output side, axis 1 with the input.
    """
    return torch.einsum("ab...,ao,bi->oi...", core, left.reshape(left.shape[0], -1), right.reshape(right.shape[0], -1))


class LoRAModule(NetworkModule):
    """kohya LoRA / LoCon and the PEFT / diffusers namings of the same thing."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], up_key: str, down_key: str):
        super().__init__(tensors, (up_key, down_key, LORA_MID, *COMMON_KEYS))
        self.up = tensors[up_key]
        self.down = tensors[down_key]
        self.mid = tensors.get(LORA_MID)
        kernel = self.mid if self.mid is not None else self.down
        self.kind = "locon" if kernel.dim() > 2 and math.prod(kernel.shape[2:]) > 1 else "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor:
        up, down = _f32(self.up, device), _f32(self.down, device)
        mid = None if self.mid is None else _f32(self.mid, device)
        if dyn_dim:
            # A1111's dyn=: keep the first dyn_dim ranks (DyLoRA orders them by importance). The scale stays
            # alpha / the stored rank (`self.rank`), as A1111 and kohya's DyLoRA do.
            up, down = up[:, :dyn_dim], down[:dyn_dim]
            mid = None if mid is None else mid[:dyn_dim, :dyn_dim]
        if up.shape[1] != down.shape[0]:
            raise ShapeMismatch(f"lora up {_shape(up)} and down {_shape(down)} disagree on the rank")
        if mid is not None:
            return _fit(_tucker(mid, up.reshape(up.shape[0], -1).T, down), weight.shape, self.kind)
        return _fit(_compose(up, down), weight.shape, self.kind)


def _compose(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The single layer equal to `down` followed by `up`; at most one of the two may have a kernel > 1x1."""
    out, rank, n_in = up.shape[0], down.shape[0], down.shape[1]
    up_kernel, down_kernel = up.shape[2:], down.shape[2:]
    if math.prod(up_kernel) == 1:
        dw = up.reshape(out, rank) @ down.reshape(rank, -1)
        return dw.reshape(out, n_in, *down_kernel)
    if math.prod(down_kernel) == 1:
        return torch.einsum("or...,ri->oi...", up, down.reshape(rank, n_in))
    raise ShapeMismatch(f"lora up {_shape(up)} and down {_shape(down)} both have a spatial kernel")


class LoHaModule(NetworkModule):
    """LyCORIS LoHa: the Hadamard product of two low-rank (optionally Tucker) weights."""

    kind = "loha"
    own_keys = frozenset((*HADA_KEYS, *COMMON_KEYS))

    @property
    def rank(self) -> int:
        return self.tensors["hada_w1_b"].shape[0]

    def _factor(self, n: int, device: torch.device) -> torch.Tensor:
        a, b = _f32(self.tensors[f"hada_w{n}_a"], device), _f32(self.tensors[f"hada_w{n}_b"], device)
        core = self.tensors.get(f"hada_t{n}")
        if core is not None:
            return _tucker(_f32(core, device), a, b)  # with a core, a is (rank, out) and b is (rank, in)
        return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)

    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor:
        w1, w2 = self._factor(1, device), self._factor(2, device)
        if w1.shape != w2.shape:  # broadcasting would silently make something else
            raise ShapeMismatch(f"loha halves have shapes {_shape(w1)} and {_shape(w2)}")
        return _fit(w1 * w2, weight.shape, "loha")


class LoKrModule(NetworkModule):
    """LyCORIS LoKr: the Kronecker product of two factors, each stored whole or low-rank."""

    kind = "lokr"
    own_keys = frozenset((*LOKR_KEYS, *COMMON_KEYS))

    @property
    def rank(self) -> int | None:
        for n in (1, 2):  # A1111's order; LyCORIS gives both factorised parts the same rank
            if f"lokr_w{n}" not in self.tensors and f"lokr_w{n}_b" in self.tensors:
                return self.tensors[f"lokr_w{n}_b"].shape[0]
        return None  # both factors whole: LyCORIS trains them with alpha = rank, a scale of 1

    def _factor(self, n: int, device: torch.device) -> torch.Tensor:
        whole = self.tensors.get(f"lokr_w{n}")
        if whole is not None:
            return _f32(whole, device)
        a, b = _f32(self.tensors[f"lokr_w{n}_a"], device), _f32(self.tensors[f"lokr_w{n}_b"], device)
        core = self.tensors.get(f"lokr_t{n}")
        if core is not None:
            return _tucker(_f32(core, device), a, b)
        return a @ b.reshape(b.shape[0], -1)

    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor:
        w1, w2 = self._factor(1, device), self._factor(2, device)
        if w2.dim() > w1.dim():  # a conv w2 (out, in, kh, kw): w1 scales whole kernels
            w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - w1.dim()))
        # kron views its inputs; a Tucker-rebuilt w2 is a non-contiguous einsum result
        return _fit(torch.kron(w1.contiguous(), w2.contiguous()), weight.shape, "lokr")


class IA3Module(NetworkModule):
    """IA3: a learned per-channel factor on the weight (output channels, or input channels with on_input)."""

    kind = "ia3"
    own_keys = frozenset(("weight", "on_input"))

    @property
    def on_input(self) -> bool:
        flag = self.tensors.get("on_input")
        return bool(flag.reshape(-1)[0].item()) if flag is not None and flag.numel() else False

    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor:
        w = _f32(self.tensors["weight"], device)
        axis = 1 if self.on_input else 0
        if weight.dim() <= axis or w.numel() != weight.shape[axis]:
            side = "input" if self.on_input else "output"
            raise ShapeMismatch(f"ia3 {side} scale has shape {_shape(w)}, the target weight has shape {_shape(weight)}")
        view = [1] * weight.dim()
        view[axis] = -1
        return weight * w.reshape(view)


class FullModule(NetworkModule):
    """A stored difference: `diff` for the weight and/or `diff_b` for the bias."""

    kind = "full"
    own_keys = frozenset(("diff", "diff_b"))

    def _raw_delta(self, weight: torch.Tensor, device: torch.device, dyn_dim: int | None) -> torch.Tensor | None:
        diff = self.tensors.get("diff")
        return None if diff is None else _fit(_f32(diff, device), weight.shape, "diff")


def _lora_naming(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    for up_key, down_key in LORA_NAMINGS:
        if up_key in tensors and down_key in tensors:
            return up_key, down_key
    return None


def _has_lokr_factor(tensors: Mapping[str, torch.Tensor], n: int) -> bool:
    return f"lokr_w{n}" in tensors or (f"lokr_w{n}_a" in tensors and f"lokr_w{n}_b" in tensors)


def build_module(tensors: Mapping[str, torch.Tensor]) -> NetworkModule | None:
    """The module for one layer's `suffix -> tensor` group, or None when it is no format known here."""
    naming = _lora_naming(tensors)
    if naming is not None:
        return LoRAModule(tensors, *naming)
    if all(k in tensors for k in HADA_KEYS[:4]):
        return LoHaModule(tensors)
    if _has_lokr_factor(tensors, 1) and _has_lokr_factor(tensors, 2):
        return LoKrModule(tensors)
    if "diff" in tensors or "diff_b" in tensors:
        return FullModule(tensors)
    if "weight" in tensors:
        return IA3Module(tensors)
    return None
