"""BatchNorm folding: bit-exact with torch's fuse_*_bn_weights; eps found from the other file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from qinspect.analyse.fold import BatchNorm, fold_batchnorm, infer_eps


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bn(channels: int, seed: int) -> tuple[BatchNorm, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "gamma": torch.rand(channels, generator=g) * 2 + 0.1,
        "beta": torch.randn(channels, generator=g),
        "mean": torch.randn(channels, generator=g),
        "var": torch.rand(channels, generator=g) * 3 + 1e-4,
    }
    return BatchNorm("bn", *(t[k].numpy() for k in ("gamma", "beta", "mean", "var"))), t


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 9),
       eps=st.sampled_from([1e-5, 1e-3, 3e-4, 0.1]), rank=st.sampled_from([2, 3, 4, 5]),
       has_bias=st.booleans())
def test_fold_is_bit_exact_with_torch(seed, channels, eps, rank, has_bias):
    bn, t = _bn(channels, seed)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(channels, *([3] * (rank - 1)), generator=g)
    b = torch.randn(channels, generator=g) if has_bias else None
    fuse = fuse_linear_bn_weights if rank == 2 else fuse_conv_bn_weights
    tw, tb = fuse(w, b, t["mean"], t["var"], eps, t["gamma"], t["beta"])
    nw, nb = fold_batchnorm(w.numpy(), None if b is None else b.numpy(), bn, eps)
    np.testing.assert_array_equal(nw, tw.detach().numpy())
    np.testing.assert_array_equal(nb, tb.detach().numpy())


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-4])
def test_eps_is_found_from_the_stored_folded_bias(eps):
    bn, t = _bn(6, 7)
    w, b = _randn(6, 4, 3, 3, seed=1), _randn(6, seed=2)
    _, stored = fuse_conv_bn_weights(w, b, t["mean"], t["var"], eps, t["gamma"], t["beta"])
    choice = infer_eps(w.numpy(), b.numpy(), bn, stored.detach().numpy())
    assert choice.eps == eps and choice.source == "bias" and choice.matched
    assert ("not torch's default" in choice.message) == (eps != 1e-5)


def test_an_unusual_eps_is_estimated_and_said():
    bn, t = _bn(6, 3)
    w, b = _randn(6, 4, 3, 3, seed=1), _randn(6, seed=2)
    _, stored = fuse_conv_bn_weights(w, b, t["mean"], t["var"], 2.5e-3, t["gamma"], t["beta"])
    choice = infer_eps(w.numpy(), b.numpy(), bn, stored.detach().numpy())
    assert choice.source == "bias-estimate" and not choice.matched
    assert choice.eps == pytest.approx(2.5e-3, rel=1e-2)
    assert "none of the usual values" in choice.message


def test_a_bias_from_another_batchnorm_is_reported():
    bn, t = _bn(6, 3)
    other, _ = _bn(6, 99)
    w, b = _randn(6, 4, 3, 3, seed=1), _randn(6, seed=2)
    _, stored = fuse_conv_bn_weights(w, b, t["mean"], t["var"], 1e-5, t["gamma"], t["beta"])
    choice = infer_eps(w.numpy(), b.numpy(), other, stored.detach().numpy())
    assert not choice.matched and "may not be the one folded" in choice.message


def test_without_a_bias_the_weight_sqnr_decides_only_when_it_can():
    bn, t = _bn(4, 5)
    bn = BatchNorm("bn", bn.gamma, bn.beta, bn.mean, np.full(4, 1e-3, np.float32))
    w = _randn(4, 3, 3, 3, seed=3)
    folded, _ = fuse_conv_bn_weights(w, None, torch.from_numpy(bn.mean),
                                     torch.from_numpy(bn.var), 1e-3, torch.from_numpy(bn.gamma),
                                     torch.from_numpy(bn.beta))
    target = folded.detach().numpy()

    def score(x: np.ndarray) -> float:
        err = np.linalg.norm((x - target).astype(np.float64))
        return float("inf") if err == 0 else 20 * np.log10(np.linalg.norm(target) / err)

    choice = infer_eps(w.numpy(), None, bn, None, score)
    assert choice.eps == 1e-3 and choice.source == "weight"
    assert infer_eps(w.numpy(), None, bn, None, None).source == "default"
