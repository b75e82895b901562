"""LoRA / LyCORIS files on disk: `models/Lora` (`--lora-dir`) and `models/LyCORIS` (`--lyco-dir-backcompat`).

A1111's names are kept (`NetworkOnDisk`, `available_networks`, `available_network_aliases`,
`available_network_hash_lookup`, `forbidden_network_aliases`), since extensions read them. A scan reads only file
names and safetensors headers; tensors are read when a prompt asks for the network.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from modules import hashes
from modules.models.checkpoint_files import ModelFileError, read_state_dict_shapes
from modules.models.registry import natural_sort_key, read_metadata_from_safetensors
from modules.networks import user_metadata

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
SD_VERSIONS = user_metadata.SD_VERSIONS  # "Unknown", "SD1", "SD2", "SDXL"
# Cross-attention context width of each family: read from a LoRA's attn2.to_k input size.
_CONTEXT_WIDTH = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_TEXT_WIDTH = {768: "SD1", 1024: "SD2"}


def _sd_version_from_metadata(metadata: dict[str, Any]) -> str | None:
    base = str(metadata.get("ss_base_model_version", "")).lower()
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if base.startswith("sdxl") or "stable-diffusion-xl" in arch:
        return "SDXL"
    if base.startswith(("sd_v2", "sd_2")) or str(metadata.get("ss_v2", "")) == "True" or "stable-diffusion-v2" in arch:
        return "SD2"
    if base.startswith(("sd_v1", "sd_1")) or "stable-diffusion-v1" in arch:
        return "SD1"
    return None


def sd_version_from_keys(shapes: dict[str, Any]) -> str:
    """The family a LoRA was made for, from its key names and the widths of its cross-attention inputs."""
    for key, tensor in shapes.items():
        if key.startswith(("lora_te1_", "lora_te2_")) or "text_encoder_2." in key:
            return "SDXL"
        is_down = key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight"))
        if is_down and ("attn2_to_k" in key or "attn2.to_k" in key) and len(tensor.shape) == 2:
            found = _CONTEXT_WIDTH.get(int(tensor.shape[1]))
            if found:
                return found
    for key, tensor in shapes.items():
        is_down = key.endswith(("lora_down.weight", "lora_A.weight"))
        if is_down and ("q_proj" in key) and key.startswith(("lora_te_", "text_encoder.")) and len(tensor.shape) == 2:
            found = _TEXT_WIDTH.get(int(tensor.shape[1]))
            if found:
                return found
    return "Unknown"


def family_hint(shapes: dict[str, Any]) -> str:
    """Like sd_version_from_keys, but says "SD1/SD2" for a one-text-encoder file of unknown width (for messages)."""
    found = sd_version_from_keys(shapes)
    if found == "Unknown" and any(k.startswith(("lora_te_", "text_encoder.")) for k in shapes):
        return "SD1/SD2"
    return found


class NetworkOnDisk:
    """One LoRA/LyCORIS file: its names, metadata, hash, the family it was made for, and the card's sidecar."""

    def __init__(self, name: str, filename: str):
        self.name = name
        self.filename = os.path.abspath(filename)
        self.is_safetensors = filename.lower().endswith(".safetensors")
        self.metadata: dict[str, Any] = {}
        self.sd_version = "Unknown"
        self.error: str | None = None
        if self.is_safetensors:
            try:
                self.metadata = read_metadata_from_safetensors(self.filename)
                self.sd_version = _sd_version_from_metadata(self.metadata) or sd_version_from_keys(
                    read_state_dict_shapes(self.filename) or {})
            except (OSError, ValueError, ModelFileError) as e:
                self.error = str(e)  # listed, and refused by name when a prompt asks for it
        self.alias = str(self.metadata.get("ss_output_name") or name)
        self.hash: str | None = None
        self.shorthash: str | None = None
        self.set_hash(hashes.sha256_from_cache(self.filename, self.hash_title, use_addnet_hash=self.is_safetensors))
        self.mtime = os.path.getmtime(self.filename)

    @property
    def hash_title(self) -> str:
        return f"lora/{self.name}"

    def set_hash(self, value: str | None) -> None:
        self.hash = value or None
        self.shorthash = value[:12] if value else None
        if self.shorthash:
            available_network_hash_lookup[self.shorthash] = self

    def read_hash(self) -> str | None:
        """The kohya "addnet" hash (sha256 of the tensor data) for .safetensors, cached like checkpoint hashes."""
        if not self.hash:
            self.set_hash(hashes.sha256(self.filename, self.hash_title, use_addnet_hash=self.is_safetensors))
        return self.shorthash

    def get_alias(self) -> str:
        """The name a card inserts: the file's `ss_output_name`, unless the setting asks for file names or the
        alias is taken by another file (A1111's `lora_preferred_name`)."""
        from modules import shared

        preferred = shared.opts.data.get("lora_preferred_name", "Alias from file")
        if preferred == "Filename" or self.alias.lower() in forbidden_network_aliases:
            return self.name
        return self.alias

    @property
    def user_metadata(self) -> dict[str, Any]:
        return user_metadata.read(self.filename)

    @property
    def preview(self) -> str | None:
        return user_metadata.find_preview(self.filename)

    def sd_version_for_card(self) -> str:
        """The sidecar's "sd version" wins over what the file says, as in A1111."""
        chosen = self.user_metadata.get("sd version", "Unknown")
        return chosen if chosen != "Unknown" else self.sd_version

    def __repr__(self) -> str:
        return f"NetworkOnDisk({self.name!r}, {self.filename!r})"


available_networks: dict[str, NetworkOnDisk] = {}
available_network_aliases: dict[str, NetworkOnDisk] = {}
available_network_hash_lookup: dict[str, NetworkOnDisk] = {}
# Aliases two files share (or "none"): such files are inserted under their file names instead.
forbidden_network_aliases: dict[str, int] = {}
_lock = threading.Lock()


def network_dirs() -> list[str]:
    from modules import shared

    dirs = [getattr(shared.cmd_opts, "lora_dir", None), getattr(shared.cmd_opts, "lyco_dir_backcompat", None)]
    return [os.path.abspath(d) for d in dirs if d]


def _walk(root: str) -> Iterator[str]:
    """Network files under root, folders before files and naturally sorted; symlinked folders are not walked
    (one pointing at `/` would make every refresh crawl the disk), symlinked files are listed."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(folder, d))),
                         key=natural_sort_key)
        for name in sorted(files, key=natural_sort_key):
            full = os.path.join(folder, name)
            if name.lower().endswith(EXTENSIONS) and not name.startswith("._") and os.path.isfile(full):
                yield full


def list_available_networks() -> None:
    """Rescan both folders (A1111's function name); later folders win a name clash, as in A1111."""
    found: dict[str, NetworkOnDisk] = {}
    aliases: dict[str, NetworkOnDisk] = {}
    forbidden = {"none": 1, "addams": 1}
    with _lock:
        available_network_hash_lookup.clear()
        for root in network_dirs():
            if not os.path.isdir(root):
                continue
            for filename in _walk(root):
                name = os.path.splitext(os.path.basename(filename))[0]
                try:
                    entry = NetworkOnDisk(name, filename)
                except OSError as e:
                    log.warning("skipping LoRA file %s: %s", os.path.basename(filename), e)
                    continue
                found[name] = entry
                if entry.alias.lower() in forbidden:
                    forbidden[entry.alias.lower()] = 1
                if name in aliases:
                    forbidden[name.lower()] = 1
                aliases[name] = entry
                aliases[entry.alias] = entry
        available_networks.clear()
        available_networks.update(found)
        available_network_aliases.clear()
        available_network_aliases.update(aliases)
        forbidden_network_aliases.clear()
        forbidden_network_aliases.update(forbidden)


def find(name: str) -> NetworkOnDisk | None:
    """A network by the name written in a prompt: alias or file name; a stale entry (file gone) is dropped."""
    entry = available_network_aliases.get(name) or available_networks.get(name)
    if entry is None or not os.path.isfile(entry.filename):
        list_available_networks()
        entry = available_network_aliases.get(name) or available_networks.get(name)
    return entry


def find_by_hash(shorthash: str) -> NetworkOnDisk | None:
    """A network by the 12-hex hash an infotext carries (for pasting after a rename). Hashes every listed file
    not hashed yet, once; the results are cached on disk."""
    shorthash = shorthash.strip().lower()
    entry = available_network_hash_lookup.get(shorthash)
    if entry is not None:
        return entry
    for candidate in list(available_networks.values()):
        if candidate.hash is None and candidate.error is None:
            candidate.read_hash()
    return available_network_hash_lookup.get(shorthash)


def api_listing() -> list[dict[str, Any]]:
    """A1111's /sdapi/v1/loras: [{name, alias, path, metadata}]."""
    return [{"name": n.name, "alias": n.alias, "path": n.filename, "metadata": n.metadata}
            for n in available_networks.values()]
