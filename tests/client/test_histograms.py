from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.histograms import (
    bucket_counts,
    bucket_counts_joint,
    bucket_counts_unmasked,
    bucket_indices,
    histogram_wire,
)
from entmon.wire.layouts import (
    COVARIANCE_LAYOUT,
    ENTROPY_LAYOUT,
    LAYOUTS,
    bucket_count,
    bucket_index,
)
from monitor.merge import merge_counts


def reference_wire(layout: str, values: list[float]) -> dict[str, object]:
    """Pure-Python histogram with the layouts module's own bucket_index."""
    counts = [0] * bucket_count(layout)
    nonfinite = 0
    for v in values:
        if math.isnan(v):
            nonfinite += 1
        else:
            counts[bucket_index(layout, v)] += 1
    return {"layout": layout, "counts": counts, "nonfinite": nonfinite}


def wire(layout: str, values: list[float], dtype: torch.dtype = torch.float32) -> dict[str, object]:
    return histogram_wire(layout, bucket_counts(torch.tensor(values, dtype=dtype), layout).tolist())


def edge_values(layout: str) -> list[float]:
    """Every bound, its neighbours in float32 and float64, and the special values."""
    out = [0.0, -0.0, math.inf, -math.inf, 1e-45, -1e-45, 3e38, -3e38]
    for b in LAYOUTS[layout]:
        for dtype in (torch.float32, torch.float64):
            x = torch.tensor(b, dtype=torch.float64).to(dtype)
            for y in (
                x,
                torch.nextafter(x, x.new_tensor(math.inf)),
                torch.nextafter(x, x.new_tensor(-math.inf)),
            ):
                out.append(float(y))
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_le_semantics_at_every_bound(layout: str, dtype: torch.dtype) -> None:
    values = [float(torch.tensor(v, dtype=dtype)) for v in edge_values(layout)]
    got = bucket_indices(torch.tensor(values, dtype=dtype), layout).tolist()
    assert got == [bucket_index(layout, v) for v in values]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matches_binary_search_on_heavy_tailed_values(layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * torch.exp(torch.randn(200_000, generator=g) * 5)
    want = torch.bucketize(x.double(), torch.tensor(LAYOUTS[layout], dtype=torch.float64))
    assert torch.equal(bucket_indices(x, layout), want)


def binary_search(x: torch.Tensor, layout: str) -> torch.Tensor:
    bounds = torch.tensor(LAYOUTS[layout], dtype=torch.float64)
    return torch.bucketize(x.double(), bounds).masked_fill_(x.isnan(), len(bounds) + 1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_float32_bits_match_binary_search_on_every_exponent_and_near_every_bound(
    layout: str,
) -> None:
    # float32 values are bucketed from their bits (a piecewise-linear log2 and a correction):
    # random bit patterns cover every exponent, both signs, subnormals, inf and NaN payloads;
    # then the 200 float32 neighbours on each side of every bound.
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**31), 2**31, (400_000,), generator=g, dtype=torch.int64)
    near = [
        torch.tensor(b, dtype=torch.float32).view(torch.int32) + torch.arange(-200, 201)
        for b in LAYOUTS[layout]
    ]
    x = torch.cat([bits.to(torch.int32), *near]).view(torch.float32)
    assert torch.equal(bucket_indices(x, layout), binary_search(x, layout))


@pytest.mark.cuda
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bucketing_on_the_gpu_equals_the_cpu(layout: str) -> None:
    # the bit views, out= aliasing and int32 lookups of the float32 path, run on CUDA
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-(2**31), 2**31, (400_000,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    assert torch.equal(bucket_indices(x.cuda(), layout).cpu(), binary_search(x, layout))
    assert torch.equal(
        bucket_counts_unmasked(x.cuda(), layout).cpu(), bucket_counts_unmasked(x, layout)
    )


def test_joint_counts_sum_to_the_two_histograms() -> None:
    g = torch.Generator().manual_seed(2)
    ent = torch.rand(5000, generator=g) * 8
    cov = torch.randn(5000, generator=g) * torch.exp(torch.randn(5000, generator=g) * 4)
    ent[:3] = torch.tensor([math.nan, math.inf, 0.0])
    cov[:3] = torch.tensor([-math.inf, math.nan, -0.0])
    joint = bucket_counts_joint(ent, ENTROPY_LAYOUT, cov, COVARIANCE_LAYOUT)
    assert joint.shape == (bucket_count(ENTROPY_LAYOUT) + 1, bucket_count(COVARIANCE_LAYOUT) + 1)
    assert torch.equal(joint.sum(dim=1), bucket_counts_unmasked(ent, ENTROPY_LAYOUT))
    assert torch.equal(joint.sum(dim=0), bucket_counts_unmasked(cov, COVARIANCE_LAYOUT))
    assert int(joint[-1, 0]) == 1  # the NaN entropy and the -inf covariance: one token


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_nan_is_counted_apart_and_masked_values_not_at_all(layout: str) -> None:
    x = torch.tensor([1.0, math.nan, -2.0, math.nan, 3.0])
    mask = torch.tensor([True, True, False, False, True])
    h = histogram_wire(layout, bucket_counts(x, layout, mask).tolist())
    assert h["nonfinite"] == 1 and sum(h["counts"]) == 2
    assert bucket_indices(x, layout, mask).tolist()[2] == bucket_count(layout) + 1


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_counting_all_then_removing_masked_zeros_equals_masking(layout: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5000, generator=g) * 3
    x[:10] = 0.0  # real zeros stay counted
    mask = torch.rand(5000, generator=g) > 0.4
    got = bucket_counts_unmasked(torch.where(mask, x, 0.0), layout)
    got[bucket_index(layout, 0.0)] -= int((~mask).sum())
    assert torch.equal(got, bucket_counts(x, layout, mask))


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(
    layout=st.sampled_from(sorted(LAYOUTS)),
    a=st.lists(finite_or_not, max_size=60),
    b=st.lists(finite_or_not, max_size=60),
)
def test_merge_of_histograms_is_histogram_of_concatenation(
    layout: str, a: list[float], b: list[float]
) -> None:
    merged = merge_counts([wire(layout, a), wire(layout, b)])
    assert merged == wire(layout, a + b) == reference_wire(layout, a + b)


@settings(max_examples=100, deadline=None)
@given(
    layout=st.sampled_from(sorted(LAYOUTS)),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=40),
)
def test_float64_values_bucket_like_the_reference(layout: str, values: list[float]) -> None:
    assert wire(layout, values, torch.float64) == reference_wire(layout, values)


def test_wire_form_checks_its_length() -> None:
    with pytest.raises(ValueError, match="bucket counts"):
        histogram_wire("entropy-v1", [0] * 3)
