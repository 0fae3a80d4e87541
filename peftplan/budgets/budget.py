"""The memory and compute budget a plan is made for: `--vram GiB` and/or `--gpu NAME`, times `--gpus N`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from peftplan.budgets.profiles import GIB, GpuProfile, find_gpu, load_profiles
from peftplan.errors import BadInputError


@dataclass(frozen=True)
class Budget:
    """Per-GPU memory, the GPU count, and the profile used for time and cost.

    `compute_from_profile` is False when only `--vram` was given: time and cost then use the nearest
    profile with at least that much memory, and the plan says so.
    """

    vram_bytes: int
    gpus: int
    gpu: GpuProfile
    compute_from_profile: bool

    @property
    def vram_gib(self) -> float:
        return self.vram_bytes / GIB


def parse_budget(
    *, vram: float | None = None, gpu: str | None = None, gpus: int = 1, profiles_file: Path | None = None
) -> Budget:
    """A Budget from CLI-style inputs.

    Raises:
        BadInputError: no budget, a non-positive or non-finite VRAM, a GPU count below 1.
        UnknownNameError: an unknown GPU name (with a did-you-mean).
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise BadInputError(f"--gpus must be a positive integer, got {gpus!r}")
    if vram is not None and (not isinstance(vram, int | float) or not math.isfinite(vram) or vram <= 0):
        raise BadInputError(f"--vram must be a positive number of GiB, got {vram!r}")
    if gpu is not None:
        profile = find_gpu(gpu, extra=profiles_file)
        vram_bytes = int(vram * GIB) if vram is not None else profile.vram_bytes
        return Budget(vram_bytes, gpus, profile, True)
    if vram is None:
        raise BadInputError("give a budget: --vram GiB (memory per GPU) or --gpu NAME (see `peftplan plan --help`)")
    return Budget(int(vram * GIB), gpus, nearest_profile(vram, profiles_file), False)


UNLIMITED = 1 << 62


def unlimited_budget(gpus: int = 1, profiles_file: Path | None = None) -> Budget:
    """No memory limit (for predictions without a budget); time and cost on an A100 80GB profile."""
    return Budget(UNLIMITED, gpus, find_gpu("a100-80gb", extra=profiles_file), False)


def nearest_profile(vram_gib: float, profiles_file: Path | None = None) -> GpuProfile:
    """The profile with the least memory that is still at least `vram_gib` (else the largest)."""
    profiles = list(load_profiles(profiles_file)[0].values())
    fitting = [p for p in profiles if p.vram_gib >= vram_gib * 0.97]
    if fitting:
        return min(fitting, key=lambda p: (p.vram_gib, p.usd_per_hour))
    return max(profiles, key=lambda p: p.vram_gib)
