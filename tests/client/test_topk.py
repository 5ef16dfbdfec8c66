"""`client.topk.top_k` returns what `torch.topk` returns, through its chunked route too."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.topk import top_k


def assert_top_k(x: torch.Tensor, k: int) -> None:
    values, index = top_k(x, k)
    expected = torch.topk(x, k, sorted=True).values
    # The same values in the same order (NaN first, as torch.topk ranks it), each read at
    # its index, no index twice: a top k of x, possibly another of equal values on ties.
    torch.testing.assert_close(values, expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x[index], values, rtol=0, atol=0, equal_nan=True)
    assert index.dtype == torch.int64
    assert index.unique().numel() == k


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1 << 16, 1 << 19),
    per_mille=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "few values", "with nan and inf", "masked"]),
)
def test_chunked_top_k_equals_torch_topk(n: int, per_mille: float, seed: int, kind: str) -> None:
    g = torch.Generator().manual_seed(seed)
    k = max(int(n * per_mille / 1000), 1)
    x = torch.randn(n, generator=g)
    if kind == "few values":  # ties at the k-th value, across chunks
        x = torch.randint(0, 5, (n,), generator=g).float()
    elif kind == "with nan and inf":
        spots = torch.randint(0, n, (8,), generator=g)
        x[spots[:3]] = math.nan
        x[spots[3:6]] = math.inf
        x[spots[6:]] = -math.inf
    elif kind == "masked":  # most entries at the lowest float, as the statistics' scores
        x[torch.rand(n, generator=g) < 0.99] = torch.finfo(torch.float32).min
    assert_top_k(x, k)


@pytest.mark.parametrize("n", [1, 100, 65535, 65536, 65537, 1 << 20])
@pytest.mark.parametrize("k", [1, 16, 128])
def test_top_k_at_the_edges_of_its_routes(n: int, k: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n + k))
    assert_top_k(x, min(k, n))


def test_top_k_reads_a_strided_tensor() -> None:
    x = torch.randn(1 << 18, 2)[:, 1]  # not contiguous
    assert_top_k(x, 50)


@pytest.mark.parametrize("n", [65537, (1 << 18) + 13])
def test_top_k_finds_the_largest_in_the_tail_after_the_whole_chunks(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    x[-1], x[-2] = 100.0, 50.0  # n is no multiple of a chunk: these sit in the tail
    assert_top_k(x, 20)
    assert top_k(x, 20)[1][:2].tolist() == [n - 1, n - 2]
