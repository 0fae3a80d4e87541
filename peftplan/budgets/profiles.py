"""GPU profiles: the built-in table (`gpus.toml`) plus the user's own TOML files."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from peftplan.errors import BadInputError, UnknownNameError

GIB = 1 << 30
_FIELDS = ("name", "vram_gib", "bf16_tflops", "mem_bw_gbs", "pcie_gbs", "usd_per_hour")
_NUMBERS = _FIELDS[1:]


@dataclass(frozen=True)
class GpuProfile:
    """One GPU model's indicative figures (see gpus.toml for what each means)."""

    key: str
    name: str
    vram_gib: float
    bf16_tflops: float
    mem_bw_gbs: float
    pcie_gbs: float
    usd_per_hour: float

    @property
    def vram_bytes(self) -> int:
        return int(self.vram_gib * GIB)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _parse_table(key: str, table: Any, source: str) -> GpuProfile:
    if not isinstance(table, dict):
        raise BadInputError(f"{source}: [{key}] must be a table of {', '.join(_FIELDS)}")
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        from peftplan.errors import suggest

        close = suggest(unknown[0], _FIELDS)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Known keys: {', '.join(_FIELDS)}."
        raise BadInputError(f"{source}: [{key}] has unknown key {unknown[0]!r}.{hint}")
    missing = [f for f in _NUMBERS if f not in table]
    if missing:
        raise BadInputError(f"{source}: [{key}] is missing {', '.join(missing)}")
    values: dict[str, float] = {}
    for f in _NUMBERS:
        value = table[f]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BadInputError(f"{source}: [{key}] {f} must be a positive number, got {value!r}")
        values[f] = float(value)
    return GpuProfile(key=key, name=str(table.get("name", key)), **values)


def parse_profiles(text: str, source: str) -> tuple[dict[str, GpuProfile], dict[str, str]]:
    """Profiles and aliases from TOML text.

    Raises:
        BadInputError: malformed TOML, unknown keys, or non-positive figures.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{source} is not valid TOML: {exc}") from None
    aliases = raw.pop("aliases", {})
    if not isinstance(aliases, dict):
        raise BadInputError(f"{source}: [aliases] must map names to profile keys")
    profiles = {key: _parse_table(key, table, source) for key, table in raw.items()}
    return profiles, {str(k): str(v) for k, v in aliases.items()}


@cache
def builtin_profiles() -> tuple[dict[str, GpuProfile], dict[str, str]]:
    text = resources.files("peftplan.budgets").joinpath("gpus.toml").read_text("utf-8")
    return parse_profiles(text, "gpus.toml")


def user_profile_paths() -> list[Path]:
    """User profile files read by default: $XDG_CONFIG_HOME/peftplan/gpus.toml when it exists."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "peftplan" / "gpus.toml"
    return [path] if path.is_file() else []


def load_profiles(extra: Path | None = None) -> tuple[dict[str, GpuProfile], dict[str, str]]:
    """Built-in profiles, then the user's default file, then `extra`; later files override earlier ones.

    Raises:
        BadInputError: `extra` is missing or malformed.
    """
    profiles, aliases = dict(builtin_profiles()[0]), dict(builtin_profiles()[1])
    paths = user_profile_paths()
    if extra is not None:
        if not extra.is_file():
            raise BadInputError(f"GPU profile file {extra} does not exist")
        paths.append(extra)
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise BadInputError(f"cannot read GPU profiles {path}: {exc.strerror or exc}") from None
        more, more_aliases = parse_profiles(text, str(path))
        profiles.update(more)
        aliases.update(more_aliases)
    return profiles, aliases


def find_gpu(name: str, *, extra: Path | None = None) -> GpuProfile:
    """The profile called `name` (key, alias or marketing name; case, spaces and dashes ignored).

    Raises:
        UnknownNameError: no such GPU, with a did-you-mean.
    """
    profiles, aliases = load_profiles(extra)
    wanted = _normalise(name)
    lookup: dict[str, str] = {}
    for key, profile in profiles.items():
        lookup.setdefault(_normalise(key), key)
        lookup.setdefault(_normalise(profile.name), key)
        lookup.setdefault(_normalise(profile.name.replace("NVIDIA", "").replace("GeForce", "")), key)
    for alias, key in aliases.items():
        if key in profiles:
            lookup.setdefault(_normalise(alias), key)
    stripped = re.sub(r"^(nvidia|amd|geforce|instinct|radeon)+", "", wanted)
    found = lookup.get(wanted) or lookup.get(stripped)
    if found is None:
        raise UnknownNameError("GPU", name, list(profiles) + list(aliases),
                               hint=f"Known GPUs: {', '.join(profiles)} (or add one with --gpu-profiles FILE).")
    return profiles[found]
