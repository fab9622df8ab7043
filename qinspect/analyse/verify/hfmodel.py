"""The float model of a Hugging Face checkpoint, built with ``transformers`` from its
``config.json`` (never ``trust_remote_code``, never a download), and its runs on token ids.

Weights are given as numpy arrays by state-dict key. Forward hooks capture the real input
of every Linear named; forward pre-hooks let the caller replace a Linear's input (the
quantized model: each Linear's activation quantization, done in numpy by the caller).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import InputError, VerifyError


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def build(config: Mapping[str, Any], where: Path) -> Any:
    """A float32 model of ``config``'s architecture, randomly initialised (weights follow)."""
    import torch
    import transformers

    raw = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map",
                                                           "compression_config")}
    model_type = raw.pop("model_type", None)
    if not isinstance(model_type, str):
        raise InputError(f"{where}/config.json has no model_type: transformers cannot build "
                         "the float model; run without --input for synthetic inputs")
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        raise InputError(f"{where}/config.json: model_type {model_type!r} is not an "
                         "architecture transformers implements (qinspect never runs remote "
                         "code); run without --input for synthetic inputs") from exc
    cfg._attn_implementation = "eager"
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(
            cfg, trust_remote_code=False, dtype=torch.float32)
    return model.eval()


def load_weights(model: Any, state: Mapping[str, np.ndarray], what: str) -> None:
    """Copy ``state`` into the model's parameters; every parameter must be given."""
    import torch

    params = dict(model.named_parameters())
    tied = _tied(model)
    missing = [k for k in params if k not in state and k not in tied]
    if missing:
        raise VerifyError(f"{what} has no tensor for the model's parameter {missing[0]} "
                          f"(and {len(missing) - 1} more): it does not match config.json")
    with torch.no_grad():
        for key, value in state.items():
            p = params.get(key)
            if p is None:
                continue
            v = torch.from_numpy(np.ascontiguousarray(value, np.float32))
            if tuple(v.shape) != tuple(p.shape):
                raise VerifyError(f"{what}: tensor {key} has shape {tuple(v.shape)}, the "
                                  f"model built from config.json wants {tuple(p.shape)}")
            p.copy_(v)


def _tied(model: Any) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return set(keys)
    return set(keys) if getattr(model.config, "tie_word_embeddings", False) else set()


def linear_names(model: Any) -> set[str]:
    import torch

    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """The model's logits for ``tokens`` ``[batch, seq]`` (float32 numpy)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(np.asarray(tokens, np.int64)), use_cache=False)
    return out.logits.detach().to(torch.float32).numpy()


@contextmanager
def captured(model: Any, names: set[str]) -> Iterator[dict[str, np.ndarray]]:
    """Inside: the input of every Linear in ``names`` of each forward, ``[rows, in]``."""
    got: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def record(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).numpy().copy()
            got[name] = np.concatenate([got[name], x]) if name in got else x
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names if n in modules]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replaced_inputs(model: Any, replace: Mapping[str, Callable[[np.ndarray], np.ndarray]]
                    ) -> Iterator[None]:
    """Inside: each named Linear sees ``replace[name](x)`` instead of its input ``x``."""
    import torch

    modules = dict(model.named_modules())

    def hook(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., tuple[Any, ...]]:
        def pre(_mod: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            y = fn(x.detach().float().numpy())
            return (torch.from_numpy(np.ascontiguousarray(y, np.float32)).to(x.dtype),
                    *args[1:])
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(fn)) for n, fn in replace.items()
               if n in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
