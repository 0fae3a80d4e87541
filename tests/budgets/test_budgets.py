"""GPU profiles as data, user profiles in TOML, and budget parsing with did-you-mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.budgets import builtin_profiles, find_gpu, load_profiles, parse_budget
from peftplan.errors import BadInputError, UnknownNameError

REQUIRED = ["rtx-3090", "rtx-4090", "rtx-5090", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-80gb",
            "h200", "mi300x"]


def test_builtin_profiles_cover_the_required_gpus() -> None:
    profiles, aliases = builtin_profiles()
    assert set(REQUIRED) <= set(profiles)
    for profile in profiles.values():
        assert profile.vram_gib > 0 and profile.bf16_tflops > 0 and profile.mem_bw_gbs > 0
        assert profile.pcie_gbs > 0 and profile.usd_per_hour > 0
    assert all(target in profiles for target in aliases.values())
    assert profiles["h100-80gb"].bf16_tflops > profiles["a100-80gb"].bf16_tflops > profiles["rtx-3090"].bf16_tflops


@pytest.mark.parametrize(("name", "key"), [("RTX 4090", "rtx-4090"), ("4090", "rtx-4090"), ("h100", "h100-80gb"),
                                           ("NVIDIA H200", "h200"), ("a100-40gb", "a100-40gb"), ("AMD MI300X", "mi300x")])
def test_names_are_matched_loosely(name: str, key: str) -> None:
    assert find_gpu(name).key == key


def test_unknown_gpu_has_a_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: .*h100"):
        find_gpu("h1000")


def test_budget_from_vram_gpu_or_both() -> None:
    vram = parse_budget(vram=24)
    assert vram.vram_bytes == 24 << 30 and not vram.compute_from_profile
    assert vram.gpu.vram_gib >= 23  # time and cost use the nearest profile with that much memory
    gpu = parse_budget(gpu="a100-80gb", gpus=4)
    assert gpu.vram_bytes == 80 << 30 and gpu.gpus == 4 and gpu.compute_from_profile
    both = parse_budget(vram=70, gpu="h100")
    assert both.vram_bytes == 70 << 30 and both.gpu.key == "h100-80gb"


@pytest.mark.parametrize("bad", [dict(vram=-1.0), dict(vram=0.0), dict(vram=float("nan")), dict(), dict(vram=8, gpus=0)])
def test_bad_budgets_are_bad_input(bad: dict) -> None:
    with pytest.raises(BadInputError):
        parse_budget(**bad)


def test_user_profiles_add_and_override(tmp_path: Path) -> None:
    path = tmp_path / "gpus.toml"
    path.write_text(
        '[aliases]\n"lab" = "lab-gpu"\n\n'
        '[lab-gpu]\nname = "Lab GPU"\nvram_gib = 48\nbf16_tflops = 100\nmem_bw_gbs = 900\npcie_gbs = 25\nusd_per_hour = 0.5\n\n'
        '[l4]\nvram_gib = 24\nbf16_tflops = 121\nmem_bw_gbs = 300\npcie_gbs = 25\nusd_per_hour = 0.1\n'
    )
    profiles, _ = load_profiles(path)
    assert profiles["l4"].usd_per_hour == 0.1
    budget = parse_budget(gpu="lab", profiles_file=path)
    assert budget.vram_bytes == 48 << 30 and budget.gpu.name == "Lab GPU"


def test_user_profiles_from_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "peftplan").mkdir()
    (tmp_path / "peftplan" / "gpus.toml").write_text(
        "[tiny]\nvram_gib = 4\nbf16_tflops = 10\nmem_bw_gbs = 100\npcie_gbs = 8\nusd_per_hour = 0.05\n"
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert find_gpu("tiny").vram_gib == 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[x]\nvram_gib = 24\nbf16_tflops = 1\nmem_bw_gbs = 1\npcie_gbs = 1\nusd_per_hour = 1\nvram_gb = 3\n", "Did you mean"),
        ("[x]\nvram_gib = -24\nbf16_tflops = 1\nmem_bw_gbs = 1\npcie_gbs = 1\nusd_per_hour = 1\n", "positive"),
        ("[x]\nvram_gib = 24\n", "missing"),
        ("[x\n", "TOML"),
    ],
)
def test_malformed_user_profiles_are_bad_input(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "gpus.toml"
    path.write_text(text)
    with pytest.raises(BadInputError, match=needle):
        load_profiles(path)
    with pytest.raises(BadInputError, match="does not exist"):
        load_profiles(tmp_path / "missing.toml")
