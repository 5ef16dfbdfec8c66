from __future__ import annotations

import math

import pytest
import torch

from client.entropy import token_entropy


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum p log p in float64 over the whole vocabulary at once (entr(0) = 0)."""
    p = torch.softmax(logits.double(), dim=-1)
    return torch.special.entr(p).sum(dim=-1)


@pytest.mark.parametrize(
    ("shape", "chunk_size"), [((7, 50), 3), ((2, 9, 1000), 4), ((1, 1, 5), 256), ((33, 257), 32)]
)
def test_matches_naive_formula(shape: tuple[int, ...], chunk_size: int) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(shape, generator=g) * 4
    got = token_entropy(logits, chunk_size=chunk_size)
    assert got.shape == shape[:-1] and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_entropy(logits), rtol=0, atol=1e-5)


def test_half_precision_input_is_computed_in_fp32() -> None:
    logits = (torch.randn(64, 3000, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    got = token_entropy(logits, chunk_size=16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_entropy(logits.float()), rtol=0, atol=1e-5)


def test_masked_vocabulary_entries_contribute_nothing() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 100, generator=g)
    allowed = torch.rand(16, 100, generator=g) > 0.6
    allowed[:, 0] = True
    masked = logits.masked_fill(~allowed, -math.inf)
    got = token_entropy(masked, chunk_size=5)
    assert torch.isfinite(got).all()
    want = torch.stack([naive_entropy(row[ok]) for row, ok in zip(logits, allowed, strict=True)])
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_known_values() -> None:
    one_hot = torch.tensor([[0.0, -math.inf, -math.inf], [5.0, 5.0, -math.inf]])
    torch.testing.assert_close(token_entropy(one_hot), torch.tensor([0.0, math.log(2)]))
    uniform = torch.zeros(2, 4096)
    torch.testing.assert_close(token_entropy(uniform), torch.full((2,), math.log(4096)))


def test_non_finite_logits_give_nan_not_a_crash() -> None:
    logits = torch.randn(3, 10)
    logits[0, 3] = math.nan
    logits[1, 2] = math.inf
    got = token_entropy(logits)
    assert got[0].isnan() and got[1].isnan() and got[2].isfinite()


def test_no_autograd_graph_and_bad_chunk_size() -> None:
    logits = torch.randn(4, 10, requires_grad=True)
    assert not token_entropy(logits).requires_grad
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(logits, chunk_size=0)
