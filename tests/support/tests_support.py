"""Helpers shared by tests that need torch's own view of a file."""

from __future__ import annotations

import torch

from qinspect.loaders.reader import ScriptObjectState


def raw_keys(path) -> set[str]:
    """The keys torch itself reads from ``path`` (weights-only, ScriptObjects as state)."""
    with torch.serialization.safe_globals([(ScriptObjectState, "torch.ScriptObject")]):
        return set(torch.load(path, weights_only=True))


def keys_attributed(ckpt) -> set[str]:
    return {ref.key for layer in ckpt.layers for ref in layer.keys}
