"""Instantiate the real transformers class from a config dict, on the meta device or with random weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from torch import nn


def to_hf_config(config: dict[str, Any], *, trust_remote_code: bool = False) -> Any:
    """A `transformers.PretrainedConfig` from a config.json-shaped dict."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    native = config.get("model_type") in CONFIG_MAPPING
    if not native and "auto_map" in config and not trust_remote_code:
        raise BadInputError(
            f"model_type {config.get('model_type')!r} needs custom code; pass --trust-remote-code to allow it"
        )
    # A natively supported architecture never runs the repository's own code, even if auto_map names it.
    dropped = {"transformers_version", "_name_or_path"} | ({"auto_map"} if native else set())
    fields = {k: v for k, v in config.items() if k not in dropped}
    try:
        return transformers.AutoConfig.for_model(**fields)
    except (ValueError, KeyError) as exc:
        reason = str(exc).split(". Should contain one of")[0][:300]  # not the list of every known type
        raise BadInputError(f"transformers cannot build a config for model_type {config.get('model_type')!r}: {reason}") from None


def build_model(
    config: dict[str, Any],
    *,
    device: str | torch.device = "meta",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """The architecture named in `config["architectures"]`, with uninitialised (meta) or random weights."""
    import torch
    import transformers

    hf_config = to_hf_config(config, trust_remote_code=trust_remote_code)
    architectures = config.get("architectures") or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    with torch.device(device):
        model = model_cls(hf_config) if model_cls is not None else _from_auto_class(hf_config, config, trust_remote_code)
    if dtype is not None:
        model = model.to(dtype)
    return model


def _from_auto_class(hf_config: Any, config: dict[str, Any], trust_remote_code: bool) -> nn.Module:
    """The model of a config that names no architecture (e.g. deberta-v2-xxlarge's): the first auto
    class that knows it, language-model heads first, as the catalog builds the same model.

    Raises:
        BadInputError: no auto class knows this model type.
    """
    import transformers

    from peftplan.models.spec import ENCODER_TYPES

    heads = ["AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModel"]
    if config.get("model_type") in ENCODER_TYPES:  # trained with their masked-LM head (BERT also has a causal one)
        heads[:2] = heads[1::-1]
    for head in heads:
        try:
            return getattr(transformers, head).from_config(hf_config, trust_remote_code=trust_remote_code)  # type: ignore[no-any-return]
        except ValueError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise  # a bad config, not a head that does not know this model type
    raise BadInputError(f"transformers has no model class for model_type {config.get('model_type')!r} "
                        "(and the config names no 'architectures')")
