"""Run inside the torchtune venv (`make stacks`): load a `plan --emit torchtune` command as `tune run` would.

Prints JSON: override keys absent from the shipped config, and the built model's parameter counts.
Usage: torchtune_check.py CONFIG OVERRIDE...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
import torchtune  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchtune import config  # noqa: E402
from torchtune._recipe_registry import get_all_recipes  # noqa: E402
from torchtune.config._utils import _merge_yaml_and_cli_args  # noqa: E402


def main(name: str, overrides: list[str]) -> dict[str, object]:
    entry = next(c for r in get_all_recipes() for c in r.configs if c.name == name)
    base = OmegaConf.load(Path(torchtune.__file__).parent.parent / "recipes" / "configs" / entry.file_path)
    absent = [o for o in overrides if OmegaConf.select(base, o.lstrip("~").split("=", 1)[0], default="<absent>") == "<absent>"]
    cfg = _merge_yaml_and_cli_args(argparse.Namespace(**OmegaConf.to_container(base)), overrides)
    config.validate(cfg)
    with torch.device("meta"):
        model = config.instantiate(cfg.model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora" in n or "magnitude" in n)
    return {"absent": absent, "lora_params": lora, "params": sum(p.numel() for p in model.parameters()),
            "max_seq_len": cfg.tokenizer.max_seq_len, "dtype": cfg.dtype, "optimizer": cfg.optimizer._component_,
            "optimizer_in_bwd": cfg.get("optimizer_in_bwd"), "loss": cfg.loss._component_}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
