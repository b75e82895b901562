"""A1111's `modules.extra_networks`: `<name:args>` tags in prompts (`<lora:file:0.8>`, `<hypernet:x:1>`).

The tags are never prompt words: they are cut from the text the encoder sees (the infotext keeps them, as in
A1111) and handed to the handler registered under their name. Until a network type has a handler, each tag of
that type is reported by name as not applied, so a person sees that their LoRA did nothing.
"""

from __future__ import annotations

import re
from typing import Any

# A1111's pattern: an identifier, a colon, then anything up to the closing bracket.
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    """One tag's arguments: `<lora:name:0.8:te=1>` gives items ["name", "0.8", "te=1"]."""

    def __init__(self, items: list[str] | None = None):
        self.items = list(items or [])
        self.positional, self.named = [], {}
        for item in self.items:
            key, sep, value = item.partition("=")
            if sep:
                self.named[key] = value
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items


class ExtraNetwork:
    """Base class of a network type's handler (A1111's API): activate per batch, deactivate after the job."""

    def __init__(self, name: str):
        self.name = name

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        pass

    def deactivate(self, p: Any) -> None:
        pass


extra_network_registry: dict[str, ExtraNetwork] = {}
extra_network_aliases: dict[str, ExtraNetwork] = {}  # "lyco" -> the lora handler


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network: ExtraNetwork, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """The prompt without its tags, and the tags' arguments grouped by network type."""
    found: dict[str, list[ExtraNetworkParams]] = {}

    def take(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams(match.group(2).split(":")))
        return ""

    prompt = prompt or ""
    # Every tag ends with ">": text after the last one cannot hold a tag, and scanning it would retry the
    # pattern from every "<x:" there (quadratic on "<a:" * n).
    end = prompt.rfind(">") + 1
    return re_extra_net.sub(take, prompt[:end]) + prompt[end:], found


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Every prompt without its tags; the tags of the first prompt (A1111 activates one set per batch)."""
    stripped, data = [], None
    for prompt in prompts:
        text, found = parse_prompt(prompt)
        stripped.append(text)
        if data is None:
            data = found
    return stripped, data or {}


def unapplied(prompts: list[str]) -> list[str]:
    """`type:name` of each tag in these prompts whose network type has no handler here, in order, once each."""
    names: list[str] = []
    for prompt in prompts:
        for kind, params_list in parse_prompt(prompt)[1].items():
            if kind in extra_network_registry or kind in extra_network_aliases:
                continue
            for params in params_list:
                label = f"{kind}:{params.positional[0] if params.positional else ''}"
                if label not in names:
                    names.append(label)
    return names


def not_applied_warning(prompts: list[str]) -> str:
    """The line a person sees when tags in their prompt did nothing ("" when there are none)."""
    names = unapplied(prompts)
    if not names:
        return ""
    return "Extra networks not applied (not supported in this version): " + ", ".join(names)


def activate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    """Call every registered handler for this batch (with [] when its tags are absent), as A1111 does. Tags of an
    alias join their handler's list (A1111 calls the handler twice, and `<lyco:>` then undoes `<lora:>`)."""
    for name, handler in extra_network_registry.items():
        params = list(extra_network_data.get(name, []))
        for alias, target in extra_network_aliases.items():
            if target is handler and alias != name:
                params += extra_network_data.get(alias, [])
        handler.activate(p, params)


def infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """Let each network type fix up pasted parameters (LoRA: find a renamed file by the hash in the infotext).
    Runs on every paste (PNG Info, the paste button, the API), before extensions' on_infotext_pasted."""
    for handler in extra_network_registry.values():
        fix = getattr(handler, "infotext_pasted", None)
        if fix is not None:
            fix(infotext, params)


def deactivate(p: Any) -> None:
    for handler in extra_network_registry.values():
        handler.deactivate(p)
