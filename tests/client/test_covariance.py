from __future__ import annotations

import math

import torch

from client.batch import masked_batch, zero_masked
from client.covariance import centred, token_covariance


def reference_cov(lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = mask > 0
    lp64, adv64 = lp.double()[valid], adv.double()[valid]
    cov = torch.zeros_like(lp, dtype=torch.float64)
    cov[valid] = (lp64 - lp64.mean()) * (adv64 - adv64.mean())
    return cov


def batch(seed: int, B: int = 6, T: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 4
    adv = torch.randn(B, 1, generator=g).expand(B, T) + 0.1 * torch.randn(B, T, generator=g)
    mask = (torch.arange(T) < torch.randint(1, T, (B, 1), generator=g)).float()
    return lp, adv, mask


def test_matches_the_definition() -> None:
    lp, adv, mask = batch(0)
    torch.testing.assert_close(
        token_covariance(lp, adv, mask).double(), reference_cov(lp, adv, mask), atol=1e-6, rtol=0
    )


def test_junk_at_masked_positions_changes_nothing() -> None:
    lp, adv, mask = batch(1)
    junk_lp = torch.where(mask > 0, lp, torch.full_like(lp, math.nan))
    junk_adv = torch.where(mask > 0, adv, torch.full_like(adv, -math.inf))
    assert torch.equal(token_covariance(junk_lp, junk_adv, mask), token_covariance(lp, adv, mask))


def test_mean_of_token_covariance_is_the_covariance() -> None:
    lp, adv, mask = batch(2)
    valid = mask > 0
    c = centred(masked_batch(lp, None, adv, mask))
    pairs = torch.stack([lp[valid].double(), adv[valid].double()])
    want = torch.cov(pairs, correction=0)[0, 1]
    torch.testing.assert_close(c.cov.sum().double() / int(c.n), want, atol=1e-6, rtol=0)
    assert int(c.n) == int(valid.sum())


def test_all_masked_gives_zeros_not_nan() -> None:
    lp, adv, _ = batch(3)
    cov = token_covariance(lp, adv, torch.zeros_like(lp))
    assert torch.equal(cov, torch.zeros_like(lp))


def test_gradient_never_flows_through_covariance() -> None:
    lp, adv, mask = batch(4)
    lp.requires_grad_(True)
    assert not token_covariance(lp, adv, mask).requires_grad


def test_zero_masked_is_where_bit_for_bit() -> None:
    lp, adv, mask = batch(4)
    junk = adv.clone()
    padding = int((mask == 0).sum())
    junk[mask == 0] = torch.tensor([math.nan, -math.inf, math.inf, -0.0]).repeat(padding)[:padding]
    junk[0, 0] = -math.nan  # a NaN at a valid token keeps its bits
    b = masked_batch(lp, None, adv, mask)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}
    for x in (junk, junk.double(), junk.clone().requires_grad_()):
        got, want = zero_masked(x, b).detach(), torch.where(mask > 0, x.detach(), 0.0)
        assert torch.equal(got.view(bits[x.dtype]), want.view(bits[x.dtype]))
    assert zero_masked(junk.clone().requires_grad_(), b).requires_grad  # the `where` fallback


def test_centred_into_buffers_is_centred() -> None:
    lp, adv, mask = batch(5)
    b = masked_batch(lp, None, adv, mask)
    buffers = (torch.empty(lp.numel()), torch.empty(lp.numel()))
    into, fresh = centred(b, out=buffers), centred(b)
    assert into.cov.data_ptr() == buffers[1].data_ptr()
    for x, y in zip(into, fresh, strict=True):
        assert x == y if isinstance(x, str) or x is None else torch.equal(x, y)
