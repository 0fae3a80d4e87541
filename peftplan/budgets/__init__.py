"""GPU budgets: profiles as data (`gpus.toml`, plus the user's own TOML) and budget parsing."""

from __future__ import annotations

from peftplan.budgets.budget import Budget, nearest_profile, parse_budget, unlimited_budget
from peftplan.budgets.profiles import GpuProfile, builtin_profiles, find_gpu, load_profiles

__all__ = ["Budget", "GpuProfile", "builtin_profiles", "find_gpu", "load_profiles", "nearest_profile", "parse_budget",
           "unlimited_budget"]
