"""Layer names in order: dotted module paths compared part by part, numbers as numbers.

``natural_key`` orders ``layers.2`` before ``layers.10`` (and ``weight_ih_l2`` before
``weight_ih_l10``). ``module_key`` adds the order in which a transformers decoder runs
its well-known sub-modules (attention q, k, v, o before the MLP's gate, up, down), for
files that store their tensors sorted by name (safetensors) and keep no module order.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")
NaturalKey = tuple[tuple[str | int, ...], str]

# Forward order of the common transformers modules; a name not listed sorts after the
# listed ones of its level, then naturally. Only siblings are ever compared.
FORWARD_RANK = {name: i for i, name in enumerate((
    "model", "transformer", "embed_tokens", "wte", "layers", "h", "norm", "ln_f",
    "input_layernorm", "self_attn", "attn", "attention", "post_attention_layernorm",
    "block_sparse_moe", "mlp", "feed_forward",
    "q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj", "k_proj", "kv_a_proj_with_mqa",
    "kv_a_layernorm", "kv_b_proj", "v_proj", "qkv_proj", "o_proj",
    "router", "gate", "gate_proj", "up_proj", "gate_up_proj", "experts", "shared_experts",
    "down_proj", "lm_head"))}
_UNLISTED = len(FORWARD_RANK)


def natural_key(name: str) -> NaturalKey:
    """``a.b10.c`` -> a key that compares digit runs as numbers (ties: the text)."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def module_key(name: str) -> tuple[tuple[int, NaturalKey], ...]:
    """A dotted path's key: each part by its forward rank, then naturally."""
    return tuple((FORWARD_RANK.get(part, _UNLISTED), natural_key(part))
                 for part in name.split("."))
