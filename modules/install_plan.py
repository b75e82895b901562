"""What set-up must install: each requirement checked against the installed distribution, nothing imported.

A line in requirements.txt may carry a compatibility range in its comment:

    numpy==2.4.6  # compatible: >=2.0,<3

The pin is what a fresh machine gets. An installed version inside the range is kept (Colab's and RunPod's
images ship their own numpy, pillow, ...; replacing them breaks other things on the machine and costs
minutes); a version outside it, or an absent package, gets the pin. Lines without a range need their specifier
met, as pip would. Only launch.py (before the virtual environment has anything) uses this, so it needs nothing
but the standard library and the `packaging` that pip carries.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a fresh venv has no packaging yet; pip always carries one
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]

_COMPATIBLE = re.compile(r"#.*?\bcompatible:\s*([^\s#()]+)")

VersionOf = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Decision:
    """One requirement line and what set-up does about it."""

    line: str  # the requirement as written, without its comment (what pip is given)
    name: str
    installed: str | None
    action: str  # "ok" (satisfied), "keep" (compatible, kept), "install", "upgrade" (replace), "unreadable"
    pin: str = ""
    compatible: str = ""

    def message(self) -> str:
        """One line for the console, or "" for a requirement that needs nothing said."""
        if self.action == "keep":
            return f"kept {self.name} {self.installed} (requirements pin {self.pin or self.line})"
        if self.action == "install":
            return f"installing {self.line} ({self.name} is not installed)"
        if self.action == "upgrade":
            why = f"outside the compatible range {self.compatible}" if self.compatible else "the requirements pin it"
            return f"replacing {self.name} {self.installed} with {self.line} ({why})"
        if self.action == "unreadable":
            return f"cannot read the requirement {self.line!r}"
        return ""


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfies(version: str, specifier: SpecifierSet) -> bool:
    try:
        return specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _pin_of(requirement: Requirement) -> str:
    pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
    return pins[0] if len(pins) == 1 else ""


def decide(raw: str, version_of: VersionOf = installed_version) -> Decision | None:
    """The decision for one line of a requirements file; None for blanks, comments, options and lines whose
    environment marker excludes this machine."""
    line = raw.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return Decision(line, line, None, "unreadable")
    if requirement.marker is not None and not requirement.marker.evaluate():
        return None
    match = _COMPATIBLE.search(raw)
    compatible = match.group(1) if match else ""
    name, pin = requirement.name, _pin_of(requirement)
    installed = version_of(name)
    if installed is None:
        return Decision(line, name, None, "install", pin, compatible)
    if _satisfies(installed, requirement.specifier):
        return Decision(line, name, installed, "ok", pin, compatible)
    try:
        keep = bool(compatible) and _satisfies(installed, SpecifierSet(compatible))
    except InvalidSpecifier:
        keep = False  # a broken range keeps nothing: the pin wins, as on a fresh machine
    return Decision(line, name, installed, "keep" if keep else "upgrade", pin, compatible)


def plan(lines: Iterable[str], version_of: VersionOf = installed_version) -> list[Decision]:
    return [d for d in (decide(raw, version_of) for raw in lines) if d is not None]


def plan_file(path: str, version_of: VersionOf = installed_version) -> list[Decision]:
    with open(path, encoding="utf8") as file:
        return plan(file, version_of)


def to_install(decisions: Iterable[Decision]) -> list[str]:
    return [d.line for d in decisions if d.action in ("install", "upgrade")]


def constraints(decisions: Iterable[Decision], extra: Mapping[str, str]) -> list[str]:
    """`name==version` for everything installed that set-up keeps, so pip cannot replace it while it resolves
    what it installs (its dependencies included). `extra` adds packages outside the file (torch)."""
    kept = {d.name: d.installed for d in decisions if d.action in ("ok", "keep") and d.installed}
    kept.update(extra)
    return [f"{name}=={version}" for name, version in kept.items()]


def snapshot() -> dict[str, str]:
    """Every installed distribution's canonical name and version."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in found:
            found[canonicalize_name(name)] = dist.version
    return found


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """One line per distribution pip installed, upgraded or removed (what a person wants to know it did)."""
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"installed {name} {new}")
        elif new is None:
            lines.append(f"removed {name} {old}")
        else:
            lines.append(f"changed {name} {old} -> {new}")
    return lines
