"""Pair the layers of two checkpoints by module path, across key layouts.

Most layers pair by name: ``fc1`` (float ``fc1.weight``) with ``fc1`` (int8
``fc1._packed_params._packed_params``), a float ``emb.weight`` with a weight-only ``emb``.
Two layouts need more:

* RNNs: float and dynamic LSTM/GRU weights both load under torch's names
  (``lstm.weight_ih_l0``, ``lstm.weight_hh_l0_reverse``...), but a dynamic file packs
  cells ``i`` = layer x ``D`` + direction and cannot always say ``D`` (2 cells of a
  1-layer bidirectional RNN look like 2 layers of a unidirectional one): weights pair
  by cell index, each side's ``D`` being 2 when it has ``_reverse`` names;
* fused BatchNorm: ``fuse_modules`` folds a BatchNorm into the conv/Linear before it
  (its sibling in a Sequential, ``features.0`` + ``features.1``) or, in QAT-fused modules,
  its child (``features.0.bn``). A BatchNorm that exists on one side only and sits right
  after (or inside) a paired layer with as many output channels is folded into that layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qinspect.analyse.fold import BatchNorm, batchnorm_of, foldable
from qinspect.model import Checkpoint, Layer, OpKind

RNN_WEIGHT = re.compile(
    r"^(?P<module>.*?)\.?weight_(?P<gate>ih|hh)_l(?P<layer>\d+)(?P<rev>_reverse)?$")


@dataclass(frozen=True)
class Pair:
    """One layer of A matched with one layer of B.

    ``how``: why they were paired (``"same module path"`` or an explanation).
    ``fold``: a BatchNorm (of the side named by ``fold_side``) to fold into that side's
    weights before comparing, because the other side has it folded already.
    """

    a: Layer
    b: Layer
    how: str
    fold: BatchNorm | None = None
    fold_side: str | None = None

    @property
    def name(self) -> str:
        return self.a.name


@dataclass(frozen=True)
class Pairing:
    pairs: tuple[Pair, ...]
    only_a: tuple[Layer, ...]
    only_b: tuple[Layer, ...]


def pair_layers(a: Checkpoint, b: Checkpoint, fold_bn: bool = True) -> Pairing:
    """Match every layer of ``a`` with at most one layer of ``b`` (order of ``a``)."""
    keys_a, keys_b = _canonical(a.layers), _canonical(b.layers)
    index_b = {key: layer for layer, key in zip(b.layers, keys_b, strict=True)}
    pairs: list[Pair] = []
    used_b: set[str] = set()
    for layer, key in zip(a.layers, keys_a, strict=True):
        other = index_b.get(key)
        if other is None or other.name in used_b:
            continue
        used_b.add(other.name)
        pairs.append(Pair(layer, other, _how(layer, other)))
    paired_a = {p.a.name for p in pairs}
    only_a = [lay for lay in a.layers if lay.name not in paired_a]
    only_b = [lay for lay in b.layers if lay.name not in used_b]
    if fold_bn:
        pairs, only_a = _attach_folds(pairs, a.layers, only_a, "a")
        pairs, only_b = _attach_folds(pairs, b.layers, only_b, "b")
    return Pairing(tuple(pairs), tuple(only_a), tuple(only_b))


def _canonical(layers: tuple[Layer, ...]) -> list[str]:
    """Names under which layers pair: RNN weights by packed cell index."""
    directions: dict[str, int] = {}
    for layer in layers:
        m = RNN_WEIGHT.match(layer.name)
        if m and m.group("rev"):
            directions[m.group("module")] = 2
    out = []
    for layer in layers:
        m = RNN_WEIGHT.match(layer.name)
        if m is None or layer.weight is None:
            out.append(layer.name)
            continue
        d = directions.get(m.group("module"), 1)
        cell = int(m.group("layer")) * d + (1 if m.group("rev") else 0)
        prefix = f"{m.group('module')}." if m.group("module") else ""
        out.append(f"{prefix}<cell {cell}>.{m.group('gate')}")
    return out


def _how(a: Layer, b: Layer) -> str:
    if a.name == b.name:
        return "same module path"
    return (f"{a.name} and {b.name} are the same packed RNN cell (torch numbers cells "
            "layer x directions + direction; one of the files does not say how many "
            "directions there are)")


def _attach_folds(pairs: list[Pair], layers: tuple[Layer, ...], unpaired: list[Layer],
                  side: str) -> tuple[list[Pair], list[Layer]]:
    """Fold each one-sided BatchNorm into the paired layer it follows or belongs to."""
    by_name = {(p.a if side == "a" else p.b).name: i for i, p in enumerate(pairs)}
    order = [lay.name for lay in layers]
    remaining = []
    for layer in unpaired:
        bn = batchnorm_of(layer)
        target = _fold_target(layer, order, by_name) if bn is not None else None
        if bn is None or target is None or pairs[target].fold is not None:
            remaining.append(layer)
            continue
        pair = pairs[target]
        mine, theirs = (pair.a, pair.b) if side == "a" else (pair.b, pair.a)
        if not _can_fold(mine, theirs, bn):
            remaining.append(layer)
            continue
        pairs[target] = Pair(pair.a, pair.b, pair.how, bn, side)
    return pairs, remaining


def _fold_target(bn_layer: Layer, order: list[str], by_name: dict[str, int]) -> int | None:
    """The pair whose layer on this side owns (``X.bn``) or precedes the BatchNorm."""
    parent, _, leaf = bn_layer.name.rpartition(".")
    if leaf == "bn" and parent in by_name:
        return by_name[parent]
    i = order.index(bn_layer.name)
    if i > 0 and order[i - 1] in by_name:
        return by_name[order[i - 1]]
    return None


def _can_fold(mine: Layer, theirs: Layer, bn: BatchNorm) -> bool:
    if mine.weight is None or theirs.weight is None or mine.op is OpKind.BATCH_NORM:
        return False
    if OpKind.CONV_TRANSPOSE in (mine.op, theirs.op):
        return False
    return foldable(mine.weight.shape, bn) and mine.weight.shape == theirs.weight.shape
