"""Load a suite's base model and tokenizer: the embedded SmolLM2, a local directory, a Hub id, or random
weights from a config (catalog entry, local config.json or an inline config) for fast tests.

Weights load from safetensors only. Nothing reaches the Hub unless the suite names a Hub model.
"""

from __future__ import annotations

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
    place: str | None = None,
) -> tuple[nn.Module, Any]:
    """The base model and its tokenizer: in the suite's dtype for `device`, and on `device` unless `place`
    says where (an FSDP rank loads on the CPU; sharding moves each block to its GPU)."""
    import torch

    dtype = resolve_dtype(section.dtype, device)
    place = place or device
    model: Any
    if source.kind == "random":
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
