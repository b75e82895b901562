"""The `<lora:...>` / `<lyco:...>` prompt tags (A1111's ExtraNetworkLora), the `Lora hashes` infotext, and
resolving pasted LoRA names by hash.

Tag arguments, as A1111: `<lora:name:te[:unet[:dyn]]>` or named `te=`, `unet=`, `dyn=`; te defaults to 1, unet
to te. A batch uses the tags of its first prompt (A1111's rule). Tags inside prompt editing
(`[<lora:a:1>:<lora:b:1>:0.5]`) are not scheduled: every tag in the prompt applies for all steps, as in A1111.
"""

from __future__ import annotations

import math
import re
from typing import Any

from modules import extra_networks, shared
from modules.infotext_utils import unquote
from modules.networks import files, networks

_REMOVE_SYMBOLS = str.maketrans("", "", ":,")


def _number(params: extra_networks.ExtraNetworkParams, position: int, named: str, default, cast):
    raw = params.named.get(named, params.positional[position] if len(params.positional) > position else None)
    if raw is None:
        return default
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{named} {str(raw)[:40]!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{named} {str(raw)[:40]!r} is not a finite number")
    return value


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.errors: dict[str, str] = {}

    def activate(self, p: Any, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        params_list = list(params_list)
        additional = shared.opts.data.get("sd_lora", "None")
        if additional and additional != "None" and additional in files.available_networks and not any(
                params.items and params.items[0] == additional for params in params_list):
            weight = shared.opts.data.get("extra_networks_default_multiplier", 1.0)
            p.all_prompts = [f"{prompt}<lora:{additional}:{weight}>" for prompt in p.all_prompts]
            params_list.append(extra_networks.ExtraNetworkParams([additional, str(weight)]))

        names, te, unet, dyn, refused = [], [], [], [], {}
        for params in params_list:
            if not params.positional:
                continue
            name = params.positional[0]
            try:
                te_multiplier = _number(params, 1, "te", 1.0, float)
                unet_multiplier = _number(params, 2, "unet", te_multiplier, float)
                dyn_dim = _number(params, 3, "dyn", None, int)
            except ValueError as e:
                refused[name] = str(e)
                continue
            names.append(name)
            te.append(te_multiplier)
            unet.append(unet_multiplier)
            dyn.append(dyn_dim)
        refused.update(networks.load_networks(names, te, unet, dyn, model=getattr(p, "sd_model", None)))
        self.errors = refused
        for name, reason in refused.items():
            p.comment(f"LoRA not applied: {name}: {reason}")
        self._write_hashes(p)

    @staticmethod
    def _write_hashes(p: Any) -> None:
        if not shared.opts.data.get("lora_add_hashes_to_infotext", True):
            return
        hashes = {}
        for network in networks.loaded_networks:
            shorthash = network.network_on_disk.read_hash()
            if shorthash and network.mentioned_name:
                hashes[network.mentioned_name.translate(_REMOVE_SYMBOLS)] = shorthash
        if hashes:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in hashes.items())
        else:
            p.extra_generation_params.pop("Lora hashes", None)

    def deactivate(self, p: Any) -> None:
        """Networks stay applied until a later job asks for another set (A1111): nothing to undo per job."""

    def infotext_pasted(self, infotext: str, params: dict[str, Any]) -> None:
        infotext_pasted(infotext, params)


_re_lora = re.compile(r"<(lora|lyco):([^:>]+)(:[^>]*)?>")


def infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """A LoRA renamed since the picture was made is found by the hash in `Lora hashes` and its tag renamed."""
    raw = params.get("Lora hashes")
    if not raw or not isinstance(raw, str):
        return
    by_name = {}
    for item in unquote(raw).split(","):
        name, sep, shorthash = item.strip().rpartition(":")
        if sep and name.strip():
            by_name[name.strip()] = shorthash.strip()

    def rename(match: re.Match[str]) -> str:
        name = match.group(2)
        if files.available_network_aliases.get(name) is not None or name not in by_name:
            return match.group(0)
        found = files.find_by_hash(by_name[name])
        if found is None:
            return match.group(0)
        return f"<{match.group(1)}:{found.get_alias()}{match.group(3) or ''}>"

    for field in ("Prompt", "Negative prompt"):
        if isinstance(params.get(field), str):
            params[field] = _re_lora.sub(rename, params[field])


handler = ExtraNetworkLora()


def register() -> None:
    extra_networks.register_extra_network(handler)
    extra_networks.register_extra_network_alias(handler, "lyco")
    if not files.available_networks:
        files.list_available_networks()


def ensure_registered() -> None:
    """Register the handler once. Every front door (generation, paste) calls this before it needs it, so a
    `<lora:>` tag is never reported as not applied; an extension that replaced the handler keeps its own."""
    if "lora" not in extra_networks.extra_network_registry:
        register()
