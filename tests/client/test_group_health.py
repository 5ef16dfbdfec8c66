"""GRPO group health (client/stats.py): zero-advantage shares, response lengths and entropy by
response length, against a plain per-row reference, merged over micro-batches and ranks."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import torch

from client import Monitor
from client.histograms import length_buckets
from client.stats import StepAccumulator
from entmon.wire.layouts import LAYOUTS, LENGTH_LAYOUT, bucket_count, bucket_index
from entmon.wire.stats import ZERO_ADVANTAGE
from monitor.merge import merge_counts, merge_stats
from monitor.report_codec import report_from_python
from tests.client.conftest import FAST, host_reads_forbidden, stored_steps
from tests.conftest import ServerProcess

K = bucket_count(LENGTH_LAYOUT)
INPUTS = ("log_prob", "old_log_prob", "advantages", "entropy")


def grpo_batch(seed: int, B: int = 24, T: int = 40) -> dict[str, torch.Tensor]:
    """Rows of every kind: groups of four sharing an advantage (some all zero), a row without
    valid tokens, rows whose advantage is zero on part of their tokens, rounding-size
    advantages, a NaN advantage, and garbage (NaN, large values) under the mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).float()
    mask[1] = 0  # no valid token: no sequence
    group = torch.randn(B // 4, 1, generator=g)
    group[0] = 0.0  # a group that all scored the same
    group[3] = 1e-10  # the same, with the group mean's rounding
    adv = group.repeat_interleave(4, 0).expand(B, T).clone()
    adv[8, ::2] = 0.0  # zero on part of its tokens (PPO-style per-token advantages)
    adv[9, 0] = math.nan
    lp = -torch.rand(B, T, generator=g) * 3
    entropy = torch.rand(B, T, generator=g) * 5
    masked = mask == 0
    adv[masked & (torch.rand(B, T, generator=g) < 0.5)] = 7.0
    entropy[masked] = math.nan
    lp[masked] = math.nan
    return {
        "log_prob": lp,
        "old_log_prob": lp + 0.1,
        "advantages": adv,
        "response_mask": mask,
        "entropy": entropy,
    }


def reference(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Plain Python over the rows, float64."""
    tokens = zero_tokens = sequences = zero_sequences = 0
    lengths = [0] * K
    by_length_tokens, by_length_sums, nonfinite = [0] * K, [0.0] * K, 0
    for i in range(batch["response_mask"].shape[0]):
        valid = [j for j, m in enumerate(batch["response_mask"][i].tolist()) if m > 0]
        if not valid:
            continue
        advantages = [float(batch["advantages"][i, j]) for j in valid]
        zeros = sum(1 for a in advantages if abs(a) <= ZERO_ADVANTAGE)  # NaN: not zero
        tokens, zero_tokens, sequences = tokens + len(valid), zero_tokens + zeros, sequences + 1
        zero_sequences += zeros == len(valid)
        bucket = bucket_index(LENGTH_LAYOUT, len(valid))
        lengths[bucket] += 1
        entropy = math.fsum(float(batch["entropy"][i, j]) for j in valid)
        if math.isfinite(entropy):
            by_length_tokens[bucket] += len(valid)
            by_length_sums[bucket] += entropy
        else:
            nonfinite += 1
    return {
        "stats": {
            "tokens": tokens,
            "sequences": sequences,
            "response_length": tokens / sequences,
            "zero_adv_token_share": zero_tokens / tokens,
            "zero_adv_sequence_share": zero_sequences / sequences,
        },
        "response_length": {"layout": LENGTH_LAYOUT, "counts": lengths, "nonfinite": 0},
        "entropy_by_length": {
            "layout": LENGTH_LAYOUT,
            "counts": by_length_tokens,
            "nonfinite": nonfinite,
            "sums": by_length_sums,
        },
    }


def rows(batch: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    return {k: v[lo:hi] for k, v in batch.items()}


def step(*micro_batches: dict[str, torch.Tensor], entropy: bool = True) -> dict[str, Any]:
    acc = StepAccumulator()
    for b in micro_batches:
        acc.add(
            b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
            entropy=b["entropy"] if entropy else None,
        )  # fmt: skip
    out: dict[str, Any] = acc.pack().unpack()
    return out


def assert_health(out: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in want["stats"].items():
        assert out["stats"][name] == pytest.approx(value, rel=1e-12), name
    assert out["histograms"]["response_length"] == want["response_length"]
    got = out["histograms"]["entropy_by_length"]
    expected = want["entropy_by_length"]
    assert {k: got[k] for k in ("layout", "counts", "nonfinite")} == {
        k: expected[k] for k in ("layout", "counts", "nonfinite")
    }
    assert got["sums"] == pytest.approx(expected["sums"], rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_group_health_matches_a_plain_reference(dtype: torch.dtype) -> None:
    batch = grpo_batch(0)
    batch["entropy"][5, 0] = math.nan  # a valid token: its row goes to nonfinite
    batch = {k: v.to(dtype) if k in INPUTS else v for k, v in batch.items()}
    want = reference(batch)
    assert want["stats"]["zero_adv_sequence_share"] == pytest.approx(7 / 23)  # 0-3 but 1, 12-15
    assert want["entropy_by_length"]["nonfinite"] == 1
    out = step(batch)
    assert_health(out, want)
    report_from_python({"step": 0, **out})  # fits the service's schema


def test_a_row_without_valid_tokens_is_no_sequence_and_an_all_masked_step_has_none() -> None:
    batch = grpo_batch(1)
    out = step(batch)
    assert out["stats"]["sequences"] == 23
    assert sum(out["histograms"]["response_length"]["counts"]) == 23
    batch["response_mask"].zero_()
    out = step(batch)
    assert out["stats"] == {"tokens": 0}
    assert "response_length" not in out["histograms"]
    assert "entropy_by_length" not in out["histograms"]


def test_all_zero_advantages_make_both_shares_one_and_none_make_them_zero() -> None:
    batch = grpo_batch(2)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    stats = step(batch)["stats"]
    assert (stats["zero_adv_token_share"], stats["zero_adv_sequence_share"]) == (1.0, 1.0)
    batch["advantages"] = torch.full_like(batch["advantages"], 0.5)
    stats = step(batch)["stats"]
    assert (stats["zero_adv_token_share"], stats["zero_adv_sequence_share"]) == (0.0, 0.0)


def test_without_entropy_there_is_no_entropy_by_length() -> None:
    out = step(grpo_batch(3), entropy=False)
    assert "entropy_by_length" not in out["histograms"]
    assert out["histograms"]["response_length"] == reference(grpo_batch(3))["response_length"]


@pytest.mark.parametrize("entropy", [True, False], ids=["entropy", "no-entropy"])
def test_an_empty_micro_batch_adds_nothing_and_keeps_the_step(entropy: bool) -> None:
    """A micro-batch of no rows, or rows of no positions, is a no-op: the step keeps the other
    micro-batches' statistics (a reshape with -1 of 0 elements used to raise, and the step was
    lost)."""
    batch = grpo_batch(5)
    no_rows = rows(batch, 0, 0)
    no_positions = {k: v[:, :0] for k, v in batch.items()}
    got = step(rows(batch, 0, 10), no_rows, no_positions, rows(batch, 10, 24), entropy=entropy)
    want = step(batch, entropy=entropy)
    health = ("tokens", "sequences", "zero_adv_token_share", "zero_adv_sequence_share",
              "response_length")  # fmt: skip
    assert {k: got["stats"][k] for k in health} == pytest.approx(
        {k: want["stats"][k] for k in health}, rel=1e-12
    )
    names = ["response_length", "entropy_by_length"] if entropy else ["response_length"]
    for name in names:
        assert got["histograms"][name]["counts"] == want["histograms"][name]["counts"]


def test_micro_batches_and_ranks_merge_to_the_one_shot_statistics() -> None:
    batch = grpo_batch(4, B=32)
    batch["response_mask"][:12, 10:] = 0  # short responses on the first rank: unequal weights
    want = reference(batch)
    assert_health(step(batch), want)
    assert_health(step(rows(batch, 0, 5), rows(batch, 5, 20), rows(batch, 20, 32)), want)
    ranks = [step(rows(batch, 0, 12), rows(batch, 12, 16)), step(rows(batch, 16, 32))]
    merged = {
        "stats": merge_stats([r["stats"] for r in ranks]),
        "histograms": {
            name: merge_counts(r["histograms"][name] for r in ranks)
            for name in ("response_length", "entropy_by_length")
        },
    }
    assert_health(merged, want)


def test_group_health_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = grpo_batch(5)
    acc = StepAccumulator()

    with host_reads_forbidden(monkeypatch):
        for lo, hi in ((0, 10), (10, 24)):
            b = rows(batch, lo, hi)
            acc.add(
                b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
                entropy=b["entropy"],
            )  # fmt: skip
        packed = acc.pack()
    assert_health(packed.unpack(), reference(batch))


def test_length_buckets_on_the_device_match_the_layout_at_every_boundary() -> None:
    bounds = [int(b) for b in LAYOUTS[LENGTH_LAYOUT]]
    lengths = sorted({n for b in bounds for n in (b - 1, b, b + 1)} | {10**6})
    lengths = [0, *lengths]  # a row without valid tokens: bucket 0, taken out by `unpack`
    got = length_buckets(torch.tensor(lengths, dtype=torch.float32)).tolist()
    assert got == [bucket_index(LENGTH_LAYOUT, n) for n in lengths]
    assert got[-1] == K - 1  # beyond the last bound: the +Inf bucket


def test_a_real_service_merges_the_ranks_and_exports_the_gauges(
    shared_server: ServerProcess,
) -> None:
    """Two ranks through `entmon serve`: the API's merged step and histograms are the whole
    batch's, and /metrics carries the shares and the mean length."""
    url, run = shared_server.url, "health"
    batch = grpo_batch(6, B=32)
    batch["advantages"][9, 0] = 0.3  # no NaN: the loss stays finite
    batch["response_mask"][:12, 10:] = 0  # rank 0's responses are short
    for rank, (lo, hi) in enumerate(((0, 16), (16, 32))):
        with Monitor(run=run, url=url, config=FAST, rank=rank, world_size=2) as mon:
            b = rows(batch, lo, hi)
            mon.policy_loss(
                b["log_prob"].requires_grad_(), b["old_log_prob"], b["advantages"],
                b["response_mask"], entropy=b["entropy"],
            )  # fmt: skip
            mon.log(0)
            mon.close(60)  # a loaded machine: the default close would spool what is still in flight
    want = reference(batch)
    (point,) = stored_steps(url, run)
    assert point["ranks"] == 2
    served: dict[str, Any] = {"stats": point["stats"], "histograms": {}}
    for name in ("response_length", "entropy_by_length"):
        series = httpx.get(f"{url}/v1/runs/{run}/histograms", params={"name": name}).json()
        assert series["layout"] == LENGTH_LAYOUT and len(series["upper_bounds"]) == K - 1
        (hist,) = series["steps"]
        served["histograms"][name] = {"layout": series["layout"]} | {
            k: v for k, v in hist.items() if k != "step" and v is not None
        }
    assert_health(served, want)
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in httpx.get(f"{url}/metrics").text.splitlines()
        if f'{{run="{run}"}}' in line
    }
    labels = f'{{run="{run}"}}'
    for metric, stat in (
        ("zero_advantage_sequence_share", "zero_adv_sequence_share"),
        ("zero_advantage_token_share", "zero_adv_token_share"),
        ("response_length", "response_length"),
    ):
        assert gauges[f"entmon_{metric}{labels}"] == pytest.approx(want["stats"][stat]), metric
