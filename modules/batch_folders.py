"""img2img Batch folders: which server folders the page may read images from and write them to.

Whoever reaches the UI types these paths, so they are limited to allowed roots: the data dir and the
folders given with --batch-dirs. A path is checked twice: first as typed (made absolute, `..` removed by
text alone), which touches no disk, so a refusal says nothing about what exists outside the roots; then
with symlinks resolved (os.path.realpath), so a link inside a root cannot lead out of it. Only a path that
passes both may be reported "not found", and the resolved path is the one that gets used.

The optional PNG info folder (infotexts matched by file name) follows the same rules. Batch from folders is
off with --hide-ui-dir-config (as in A1111), and off on a server that other machines can reach (--listen,
--share, --ngrok, a non-loopback --server-name) unless --allow-batch-dirs-when-listening; uploads read no folder.
Relative paths are taken from the data dir, which is the web UI's folder by default, as in A1111.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from modules import paths
from modules.ui import masks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Root:
    """An allowed folder: `path` (absolute, as configured) for messages and for relative paths; `lexical`
    and `real` (normcase'd, the latter with symlinks resolved) for the two checks."""

    path: str
    lexical: str
    real: str


@dataclass(frozen=True)
class BatchFolders:
    """Checked, resolved folders of one batch run; output and mask are None when left empty."""

    input: str
    output: str | None
    mask: str | None
    roots: tuple[Root, ...]


class BatchImage(NamedTuple):
    path: str  # as listed in the input folder: its name matches the mask
    real: str  # symlinks resolved, checked to be inside a root: the file that is opened


def _root(folder: str) -> Root:
    absolute = os.path.abspath(folder)
    return Root(absolute, os.path.normcase(absolute), os.path.normcase(os.path.realpath(absolute)))


def extra_dirs(cmd_opts: argparse.Namespace) -> list[str]:
    """--batch-dirs values: the flag may be repeated, and each value may hold several comma-separated folders."""
    found = []
    for value in getattr(cmd_opts, "batch_dirs", None) or []:
        found += [part.strip() for part in str(value).split(",") if part.strip()]
    return found


def allowed_roots(cmd_opts: argparse.Namespace) -> tuple[Root, ...]:
    """The data dir first (relative batch paths start there), then the --batch-dirs folders."""
    return tuple(_root(folder) for folder in [paths.data_path, *extra_dirs(cmd_opts)])


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to an address others can reach


def reachable_from_other_machines(cmd_opts: argparse.Namespace) -> bool:
    """Whether the server listens beyond this machine or is tunnelled to it (gradio share, ngrok)."""
    if getattr(cmd_opts, "share", False) or getattr(cmd_opts, "ngrok", None):
        return True
    server_name = getattr(cmd_opts, "server_name", None)
    if server_name:  # --server-name wins over --listen, as in the server itself
        return not _is_loopback(server_name)
    return bool(getattr(cmd_opts, "listen", False))


def check_enabled(cmd_opts: argparse.Namespace) -> None:
    """Raise ValueError when this server does not offer batch from a directory at all."""
    if getattr(cmd_opts, "hide_ui_dir_config", False):
        raise ValueError("Batch from a directory is turned off on this server (--hide-ui-dir-config).")
    if reachable_from_other_machines(cmd_opts) and not getattr(cmd_opts, "allow_batch_dirs_when_listening", False):
        raise ValueError(
            "Batch from a directory is turned off on a server that other machines can reach (--listen, --share, "
            "--ngrok or --server-name); start it with --allow-batch-dirs-when-listening to turn it on."
        )


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # another drive on Windows, or a relative path mixed with an absolute one
        return False


def refusal(roots: Sequence[Root]) -> str:
    """The one message for any path outside the roots, whether or not it exists."""
    return (f"Batch folders must be inside: {', '.join(root.path for root in roots)} "
            "(the data dir, and folders the server allows with --batch-dirs).")


def _lexical(text: str, roots: Sequence[Root]) -> str:
    # normpath removes "..": done on the text alone, so nothing outside is looked at. No "~" expansion (as in
    # A1111): "~name" would look the user up, and whether one exists would show in the answer.
    return os.path.normpath(os.path.join(roots[0].path, text))


def resolve(text: str, roots: Sequence[Root]) -> str:
    """The real path of a typed folder or file; ValueError with `refusal` if it is (or leads) outside the roots."""
    lexical = _lexical(text, roots)
    if not any(_within(os.path.normcase(lexical), bound) for root in roots for bound in (root.lexical, root.real)):
        raise ValueError(refusal(roots))
    real = os.path.realpath(lexical)
    if not any(_within(os.path.normcase(real), root.real) for root in roots):
        raise ValueError(refusal(roots))
    return real


def _folder(label: str, text: str, roots: Sequence[Root], must_exist: bool) -> str:
    try:
        real = resolve(text, roots)
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
    # Only now, inside the roots, may the answer depend on what exists.
    if os.path.isdir(real) or (not must_exist and not os.path.lexists(real)):
        return real
    raise ValueError(f"{label} not found: {text}" if must_exist else f"{label} is not a folder: {text}")


def check(input_dir: str | None, output_dir: str | None, mask_dir: str | None,
          cmd_opts: argparse.Namespace) -> BatchFolders:
    """Check the three Batch folders typed in the page; ValueError with a message for the page if one fails.

    The input folder must exist; the mask folder too when given; the output folder is made when images are
    saved (it may not exist yet), and empty means the usual img2img folder.
    """
    check_enabled(cmd_opts)
    roots = allowed_roots(cmd_opts)
    input_dir, output_dir, mask_dir = ((text or "").strip() for text in (input_dir, output_dir, mask_dir))
    if not input_dir:
        raise ValueError("Type the input directory first (a folder with the images to process).")
    return BatchFolders(
        input=_folder("Input directory", input_dir, roots, must_exist=True),
        output=_folder("Output directory", output_dir, roots, must_exist=False) if output_dir else None,
        mask=_folder("Mask directory", mask_dir, roots, must_exist=True) if mask_dir else None,
        roots=roots,
    )


def png_info_dir(text: str, cmd_opts: argparse.Namespace) -> tuple[str, tuple[Root, ...]]:
    """The checked "PNG info directory" (where a batch reads infotexts, by file name) and the roots; ValueError
    like the other Batch folders, since it too reads a folder on the server."""
    try:
        check_enabled(cmd_opts)
    except ValueError as e:  # say which field is at fault: the Upload source itself needs no folder
        raise ValueError(f"PNG info directory: {e}") from None
    roots = allowed_roots(cmd_opts)
    return _folder("PNG info directory", text.strip(), roots, must_exist=True), roots


def png_info_file(folder: str, name: str, roots: Iterable[Root]) -> str | None:
    """The resolved file called `name` (its base name only) in the PNG info folder, or None when there is none
    or it is a link leading outside the roots."""
    base = os.path.basename(name)
    if base in ("", ".", ".."):
        return None
    real = _inside(os.path.join(folder, base), roots)
    return real if real is not None and os.path.isfile(real) else None


def _inside(path: str, roots: Iterable[Root]) -> str | None:
    real = os.path.realpath(path)
    return real if any(_within(os.path.normcase(real), root.real) for root in roots) else None


def input_images(folders: BatchFolders) -> list[BatchImage]:
    """The image files in the input folder, by name; a link that leads outside the roots is skipped."""
    found = []
    for path in masks.list_images(folders.input):
        real = _inside(path, folders.roots)
        if real is None:
            log.warning("Batch: skipping %s, a link to a file outside the allowed folders", os.path.basename(path))
            continue
        found.append(BatchImage(path, real))
    return found


def mask_for(image: BatchImage, folders: BatchFolders) -> str | None:
    """The resolved mask file for an input image, or None; a link that leads outside the roots counts as none."""
    path = masks.mask_for(image.path, folders.mask)
    if path is None:
        return None
    real = _inside(path, folders.roots)
    if real is None:
        log.warning("Batch: ignoring mask %s, a link to a file outside the allowed folders", os.path.basename(path))
    return real
