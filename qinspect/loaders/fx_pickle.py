"""Placeholder: replaced in the next commits."""

from __future__ import annotations

from qinspect.errors import UnsupportedFormatError


def load(path, *args):
    raise UnsupportedFormatError(f"{path}: this format (fx_pickle) is not supported yet")
