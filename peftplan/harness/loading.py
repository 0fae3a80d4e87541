"""Load a suite's base model and tokenizer: the embedded SmolLM2, a local directory, a Hub id, or random
weights from a config (catalog entry, local config.json or an inline config) for fast tests.

Weights load from safetensors only. Nothing reaches the Hub unless the suite names a Hub model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError
from peftplan.harness.embedded import embedded_dir, is_embedded

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peftplan.harness.suite import LoadedSuite, ModelSection

BYTE_TOKENIZER = "bytes"
_BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@dataclass(frozen=True)
class WeightsSource:
    """Where the base model's weights come from."""

    kind: str  # "pretrained" (a directory or Hub id with weights) or "random"
    location: str  # the directory, Hub id, or "<config>" for random weights
    config: dict[str, Any] | None = None  # for random weights


def weights_source(section: ModelSection, loaded: LoadedSuite) -> WeightsSource:
    """Decide where the weights come from, converting the embedded model if needed.

    Raises:
        BadInputError: an unknown model, or a Hub id while offline.
    """
    if section.config is not None:
        return WeightsSource("random", "<inline config>", section.config)
    if section.random_init:
        return WeightsSource("random", section.id, model_config(section, loaded))
    if is_embedded(section.id):
        return WeightsSource("pretrained", str(embedded_dir()))
    local = loaded.resolve_path(section.id)
    if local.is_dir():
        if not any(local.glob("*.safetensors")):
            raise BadInputError(f"model.id: {local} has no .safetensors weights (pickle checkpoints are refused)")
        return WeightsSource("pretrained", str(local))
    from peftplan.models import resolve_model

    resolved = resolve_model(section.id)  # raises for unknown names, with a did-you-mean
    if resolved.source == "catalog":
        raise BadInputError(
            f"model.id: {section.id!r} is in the offline catalog but its weights are not available offline; "
            "set random_init: true, use 'embedded', or a local directory"
        )
    return WeightsSource("pretrained", section.id)


def model_config(section: ModelSection, loaded: LoadedSuite) -> dict[str, Any]:
    """The config dict of the suite's model (for the spec, validation and the planner)."""
    if section.config is not None:
        return dict(section.config)
    if is_embedded(section.id):
        from peftplan.harness.embedded import EMBEDDED_ID
        from peftplan.models.catalog import catalog_config_dict

        return catalog_config_dict(EMBEDDED_ID)
    local = loaded.resolve_path(section.id)
    from peftplan.models import resolve_model

    return resolve_model(str(local) if local.exists() else section.id).config


def resolve_dtype(name: str, device: str) -> torch.dtype:
    import torch

    if name == "auto":
        from peftplan.harness.train import cpu_supports_bf16

        native = device.startswith("cuda") or cpu_supports_bf16()
        return torch.bfloat16 if native else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_base(
    source: WeightsSource, section: ModelSection, loaded: LoadedSuite, *, device: str, seed: int,
    place: str | None = None, quant: str = "none",
) -> tuple[nn.Module, Any]:
    """The base model and its tokenizer: in the suite's dtype for `device`, and on `device` unless `place`
    says where (an FSDP rank loads on the CPU; sharding moves each block to its GPU).

    `quant` (nf4, fp4, int8): the base is loaded as QLoRA users load it, quantized tensor by tensor by
    transformers' bitsandbytes integration, so the unquantized model never has to fit (`load_quantized`).
    """
    import torch

    dtype = resolve_dtype(section.dtype, device)
    place = place or device
    model: Any
    if quant != "none":
        model = load_quantized(source, section, dtype=dtype, place=place, quant=quant, seed=seed)
    elif source.kind == "random":
        from peftplan.models.build import build_model

        assert source.config is not None
        torch.manual_seed(seed)
        model = build_model(source.config, device=place, dtype=dtype, trust_remote_code=section.trust_remote_code)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            source.location,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=section.trust_remote_code,
        )
        model = model.to(place)
    tokenizer = load_tokenizer(section, loaded, source)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise BadInputError(
            f"model.tokenizer: {len(tokenizer)} tokens do not fit the model's "
            f"{model.get_input_embeddings().num_embeddings} embeddings"
        )
    if getattr(model, "generation_config", None) is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def bnb_config(quant: str, compute_dtype: torch.dtype) -> Any:
    """transformers' BitsAndBytesConfig for a suite's `quant`: what `methods/quantize.py` builds by hand
    (4-bit with double quantization, computing in the weights' dtype; LLM.int8 with transformers' defaults)."""
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_quantized(source: WeightsSource, section: ModelSection, *, dtype: torch.dtype, place: str, quant: str,
                   seed: int) -> nn.Module:
    """`from_pretrained(..., quantization_config=BitsAndBytesConfig(...), device_map={"": place})`.

    transformers quantizes each weight as it is read (sequentially, for on-the-fly quantization), so the peak
    while loading is the quantized model plus about one layer in `dtype`, on a GPU and in host memory alike.
    Random weights (tests) cannot be quantized from a config (STACK.md: `from_config` refuses
    quantization_config): they are built, saved to a scratch directory and loaded from there.
    """
    import tempfile

    from transformers import AutoModelForCausalLM

    from peftplan.methods.quantize import disable_cpu_repacking

    def load(location: str) -> nn.Module:
        with freed_memory_returned():
            model: nn.Module = AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, quantization_config=bnb_config(quant, dtype), device_map={"": place},
                use_safetensors=True, trust_remote_code=section.trust_remote_code,
            )
        # Before anything evaluates it (the base latency does): the avx512_bf16 repacking pitfall (STACK.md).
        disable_cpu_repacking(model)
        return model

    if source.kind != "random":
        return load(source.location)
    import torch

    from peftplan.models.build import build_model

    assert source.config is not None
    torch.manual_seed(seed)
    built = build_model(source.config, device="cpu", dtype=dtype, trust_remote_code=section.trust_remote_code)
    with tempfile.TemporaryDirectory(prefix="peftplan-random-base-") as scratch:
        built.save_pretrained(scratch, safe_serialization=True)  # type: ignore[operator]
        del built
        return load(scratch)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_GLIBC_MMAP_MAX = 32 * 1024**2  # where glibc's dynamic threshold tops out (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)


@contextlib.contextmanager
def freed_memory_returned() -> Iterator[None]:
    """While inside: blocks of 1 MiB and more are mmap'ed, so each one freed goes back to the system at once.

    Loading quantizes one weight at a time; each weight's full-precision copy is freed right after. glibc
    would keep those freed blocks (up to 32 MiB each) on its heap, and the process's resident memory would
    grow towards the unquantized size although its live tensors never do. Afterwards the threshold is set to
    where glibc's own adaptive threshold ends up. Elsewhere than glibc Linux, nothing changes.
    """
    import ctypes
    import ctypes.util
    import sys

    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None) if libc_name else None
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, 1024**2):
        yield
        return
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_MAX)


def load_tokenizer(section: ModelSection, loaded: LoadedSuite, source: WeightsSource) -> Any:
    if section.tokenizer == BYTE_TOKENIZER:
        return byte_tokenizer()
    from transformers import AutoTokenizer

    location = str(loaded.resolve_path(section.tokenizer)) if section.tokenizer else source.location
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=section.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def byte_tokenizer() -> Any:
    """A byte-level tokenizer built in code (259 tokens: <pad>, <s>, </s> and 256 bytes), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = _BYTE_CHAT_TEMPLATE
    return tokenizer


def describe_source(source: WeightsSource) -> str:
    return f"random weights ({source.location})" if source.kind == "random" else Path(source.location).name
