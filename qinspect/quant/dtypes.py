"""Integer quantization dtypes, described without importing torch.

Names are torch's dtype names without the ``torch.`` prefix.  Two families exist:

* quantized-tensor dtypes (``qint8``, ``quint8``, ``qint32``, ``quint4x2``,
  ``quint2x4``): the dtype of an eager-mode quantized tensor
  (``torch.quantize_per_tensor`` / ``torch.quantize_per_channel``); the integer
  payload is what ``Tensor.int_repr()`` returns.  ``quint4x2`` / ``quint2x4``
  pack two / four values into one ``uint8`` byte;
* plain integer dtypes (``int8``, ``uint8``, ``int4``, ``uint4``, ``int32``):
  used by PT2E (``quantized_decomposed`` ops) and torchao, where the integer
  tensor and its scale / zero point are stored separately.

The ranges below were checked against torch 2.13 (``int_repr()`` of
``torch.quantize_per_tensor`` applied to +-1e30, ``torch.iinfo`` for plain types).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QDTYPES", "QDtype", "activation_range", "qdtype"]


@dataclass(frozen=True)
class QDtype:
    """An integer quantization dtype.

    Attributes:
        name: torch dtype name without the ``torch.`` prefix (e.g. ``"quint8"``).
        qmin: smallest representable integer value.
        qmax: largest representable integer value.
        bits: number of value bits (``qmax - qmin + 1 == 2**bits``).
        signed: whether ``qmin < 0``.
        storage: numpy dtype used to hold *unpacked* values (one value per element).
    """

    name: str
    qmin: int
    qmax: int
    bits: int
    signed: bool
    storage: np.dtype

    @property
    def is_quantized_tensor_dtype(self) -> bool:
        """True for torch quantized-tensor dtypes (``q*int*``), False for plain ints."""
        return self.name.startswith("q")

    @property
    def is_packed(self) -> bool:
        """True when torch packs several values per byte (``quint4x2``, ``quint2x4``)."""
        return self.name in ("quint4x2", "quint2x4")


def _make(name: str, bits: int, signed: bool, storage: str) -> QDtype:
    """Build a QDtype with range ``[-2**(bits-1), 2**(bits-1)-1]`` or ``[0, 2**bits-1]``."""
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    return QDtype(name, qmin, qmax, bits, signed, np.dtype(storage))


QDTYPES: dict[str, QDtype] = {
    d.name: d
    for d in (
        _make("qint8", 8, True, "int8"),
        _make("quint8", 8, False, "uint8"),
        _make("qint32", 32, True, "int32"),
        _make("quint4x2", 4, False, "uint8"),
        _make("quint2x4", 2, False, "uint8"),
        _make("int8", 8, True, "int8"),
        _make("uint8", 8, False, "uint8"),
        _make("int4", 4, True, "int8"),
        _make("uint4", 4, False, "uint8"),
        _make("int32", 32, True, "int32"),
    )
}


def qdtype(name: str | QDtype) -> QDtype:
    """Look up a dtype by torch name; accepts ``"torch.qint8"`` or a QDtype as well.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    if isinstance(name, QDtype):
        return name
    key = str(name).removeprefix("torch.")
    try:
        return QDTYPES[key]
    except KeyError:
        known = ", ".join(sorted(QDTYPES))
        raise KeyError(f"unknown quantization dtype {name!r}; known dtypes: {known}") from None


def activation_range(dtype: str | QDtype, reduce_range: bool = False) -> tuple[int, int]:
    """Return the default ``(qmin, qmax)`` a torch observer uses for ``dtype``.

    Mirrors ``torch.ao.quantization.utils.calculate_qmin_qmax`` without a custom
    range: ``reduce_range=True`` drops one bit of the 8-bit types so that fbgemm's
    int16 accumulation cannot overflow -- ``quint8``/``uint8 -> (0, 127)`` and
    ``qint8``/``int8 -> (-64, 63)``.  torch ignores ``reduce_range`` for every
    other dtype, and so does this function.
    """
    d = qdtype(dtype)
    if reduce_range and d.bits == 8:
        return (-64, 63) if d.signed else (0, 127)
    return d.qmin, d.qmax
