"""Where a result came from: package versions, device, host, and the peftplan git commit."""

from __future__ import annotations

import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from peftplan.results import Provenance

PACKAGES = (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna",
    "lm-eval", "datasets", "safetensors", "pydantic", "numpy",
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def peftplan_version() -> str:
    try:
        return metadata.version("peftplan")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the repository that holds peftplan, read from `.git` (no git binary)."""
    here = (start or Path(__file__)).resolve()
    for directory in [here, *here.parents]:
        git = directory / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            text = git.read_text().strip()
            git = (directory / text.removeprefix("gitdir:").strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head or None
            ref = head.removeprefix("ref:").strip()
            for root in (git, _common_dir(git)):
                if (root / ref).is_file():
                    return (root / ref).read_text().strip()
                packed = root / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: str, started_at: str) -> Provenance:
    """A result's provenance on this host (finished_at is filled in when the trial ends)."""
    return Provenance(
        peftplan_version=peftplan_version(),
        packages=package_versions(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        device=device,
        device_name=device_name(device),
        hostname=socket.gethostname(),
        git_commit=git_commit(),
        started_at=started_at,
        finished_at=None,
    )
