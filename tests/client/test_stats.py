from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from client.control import Control
from client.histograms import bucket_counts, histogram_wire
from client.losses import policy_loss
from client.stats import StepAccumulator, WorkBuffers
from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT
from entmon.wire.stats import STAT_NAMES
from monitor.report_codec import report_from_python
from tests.client.conftest import host_reads_forbidden


def make(seed: int, B: int = 8, T: int = 100) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    return {
        "log_prob": lp,
        "old_log_prob": lp + 0.1 * torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        "response_mask": (torch.arange(T) < torch.randint(1, T + 1, (B, 1), generator=g)).float(),
        "entropy": torch.rand(B, T, generator=g) * 5,
        "token_ids": torch.randint(0, 50_000, (B, T), generator=g),
    }


def parts(batch: dict[str, torch.Tensor], n: int) -> Iterator[dict[str, torch.Tensor]]:
    B = batch["log_prob"].shape[0]
    for rows in torch.arange(B).split(B // n):
        yield {k: v[rows] for k, v in batch.items()}


def add(acc: StepAccumulator, b: dict[str, torch.Tensor], **kwargs: Any) -> None:
    acc.add(
        b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
        entropy=b["entropy"], token_ids=b["token_ids"], **kwargs,
    )  # fmt: skip


def reference(batch: dict[str, torch.Tensor], n_parts: int) -> dict[str, Any]:
    """Float64 statistics straight from the definitions (covariance per micro-batch)."""
    covs, lps, advs, ents, lrs, lengths = [], [], [], [], [], []
    for b in parts(batch, n_parts):
        valid = b["response_mask"] > 0
        lp, adv = b["log_prob"].double()[valid], b["advantages"].double()[valid]
        covs.append((lp - lp.mean()) * (adv - adv.mean()) if len(lp) else lp)
        lps.append(lp)
        advs.append(adv)
        ents.append(b["entropy"].double()[valid])
        lrs.append((b["log_prob"] - b["old_log_prob"]).double()[valid])
        lengths += [int(x) for x in valid.sum(-1) if x > 0]
    cov, ent = torch.cat(covs), torch.cat(ents)
    k = max(int(2e-4 * len(cov)), 1)
    return {
        "tokens": len(cov),
        "logp_mean": torch.cat(lps).mean(),
        "adv_mean": torch.cat(advs).mean(),
        "adv_std": torch.cat(advs).std(correction=0),
        "cov_mean": cov.mean(),
        "cov_std": cov.std(correction=0),
        "cov_max": cov.max(),
        "cov_top_concentration": torch.topk(cov, k).values.mean() / cov.mean(),
        "entropy": ent.mean(),
        "abs_log_ratio_mean": torch.cat(lrs).abs().mean(),
        "response_length": sum(lengths) / len(lengths),
        "cov": cov,
        "ent": ent,
    }


@pytest.mark.parametrize("n_parts", [1, 4])
def test_step_statistics_match_the_definitions(n_parts: int) -> None:
    batch = make(0)
    acc = StepAccumulator()
    for b in parts(batch, n_parts):
        add(acc, b)
    out = acc.pack().unpack()
    ref = reference(batch, n_parts)
    stats = out["stats"]
    assert stats["tokens"] == ref["tokens"]
    for name in (
        "logp_mean", "adv_mean", "adv_std", "cov_mean", "cov_std", "cov_max",
        "cov_top_concentration", "entropy", "abs_log_ratio_mean", "response_length",
    ):  # fmt: skip
        assert stats[name] == pytest.approx(float(ref[name]), rel=1e-5, abs=1e-6), name
    want_cov = bucket_counts(ref["cov"].float(), COVARIANCE_LAYOUT).tolist()
    want_ent = bucket_counts(ref["ent"].float(), ENTROPY_LAYOUT).tolist()
    assert out["histograms"]["covariance"] == histogram_wire(COVARIANCE_LAYOUT, want_cov)
    assert out["histograms"]["entropy"] == histogram_wire(ENTROPY_LAYOUT, want_ent)
    assert set(stats) <= set(STAT_NAMES)


def test_top_tokens_are_the_highest_covariance_valid_tokens() -> None:
    batch = make(1)

    class Tokenizer:
        def decode(self, ids: list[int]) -> str:
            return f"<{ids[0]}>"

    acc = StepAccumulator(top_tokens=5)
    for b in parts(batch, 2):
        add(acc, b)
    top = acc.pack().unpack(tokenizer=Tokenizer())["top_tokens"]
    ref = torch.sort(reference(batch, 2)["cov"], descending=True).values[:5]
    assert [t["cov"] for t in top] == pytest.approx(ref.tolist(), rel=1e-6)
    for t in top:  # each row points back at a real valid token of the batch
        hits = (batch["token_ids"] == t["token_id"]) & (batch["response_mask"] > 0)
        rows = hits.nonzero()
        assert any(int(c) == t["position"] for _, c in rows)
        assert t["text"] == f"<{t['token_id']}>"
        assert 0.0 <= t["entropy"] <= 5.0


def test_a_top_token_comes_with_its_neighbours_in_its_own_response() -> None:
    batch = make(2, B=6, T=12)
    B, T = batch["log_prob"].shape
    batch["token_ids"] = torch.arange(B * T).view(B, T) + 1000  # id -> (row, position)

    class Ids:
        def decode(self, ids: list[int]) -> str:
            return " ".join(str(i) for i in ids)

    acc = StepAccumulator(top_tokens=16)
    for b in parts(batch, 2):  # the context survives the merge of micro-batches
        add(acc, b)
    top = acc.pack().unpack(tokenizer=Ids())["top_tokens"]
    assert len(top) == 16
    valid = batch["response_mask"] > 0
    for t in top:
        row, pos = divmod(t["token_id"] - 1000, T)
        assert pos == t["position"]
        before = [p for p in range(pos - 4, pos) if p >= 0]
        after = [p for p in range(pos + 1, pos + 5) if p < T and valid[row, p]]
        assert t.get("context_before") == (
            " ".join(str(1000 + row * T + p) for p in before) or None
        ), t
        assert t.get("context_after") == (" ".join(str(1000 + row * T + p) for p in after) or None)
    assert any(t.get("context_after") is None for t in top)  # some ends of responses seen
    assert any(t.get("context_before") and t.get("context_after") for t in top)


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_loss_statistics_are_token_weighted_and_mode_specific(mode: str) -> None:
    batch = make(2, B=8, T=400)
    control = Control(loss_mode=mode, clip_cov_lb=0.1, clip_cov_ratio=0.01)
    acc, plain = StepAccumulator(), StepAccumulator()
    losses, stats = [], []
    for b in parts(batch, 4):
        lp, old, adv, mask = (
            b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask")
        )
        loss, s = policy_loss(
            lp, old, adv, mask, control, generator=torch.Generator().manual_seed(0)
        )
        add(acc, b, loss=loss, loss_stats=s)
        add(plain, b)
        losses.append(loss)
        stats.append(s)
    out = acc.pack().unpack()["stats"]
    tokens = torch.stack([s.tokens for s in stats]).double()
    mean = lambda xs: float((torch.stack(xs).double() * tokens).sum() / tokens.sum())  # noqa: E731
    assert out["policy_loss"] == pytest.approx(mean(losses), rel=1e-6)
    assert out["ppo_clip_frac"] == pytest.approx(mean([s.ppo_clip_frac for s in stats]), rel=1e-6)
    if mode == "clip_cov":
        assert out["detached"] == sum(int(s.detached) for s in stats) > 0
        assert out["candidates"] == sum(int(s.candidates) for s in stats)
        assert "penalised" not in out
    elif mode == "kl_cov":
        assert out["penalised"] == sum(int(s.penalised) for s in stats) > 0
        assert "detached" not in out and "candidates" not in out
    else:
        assert not {"detached", "penalised", "candidates"} & set(out)
    # Reusing the loss's work gives the same data statistics as computing them afresh.
    fresh = plain.pack().unpack()["stats"]
    for name in ("cov_mean", "cov_std", "cov_max", "adv_std", "logp_mean", "abs_log_ratio_mean"):
        assert out[name] == pytest.approx(fresh[name], rel=1e-6), name


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_top_tokens_of_large_micro_batches_match_the_definition(mode: str) -> None:
    # 2 micro-batches of 65 536 tokens: the chunked top-k on CPU, and for KL-Cov the ranking
    # its selection already made (its K = 131 covers the 16 top tokens).
    batch = make(5, B=32, T=4096)
    control = Control(loss_mode=mode)
    acc = StepAccumulator()
    for b in parts(batch, 2):
        lp, old, adv, mask = (
            b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask")
        )
        loss, s = policy_loss(lp, old, adv, mask, control)
        add(acc, b, loss=loss, loss_stats=s)
    out = acc.pack().unpack()
    ref = reference(batch, 2)
    want = torch.sort(ref["cov"], descending=True).values[:16]
    assert [t["cov"] for t in out["top_tokens"]] == pytest.approx(want.tolist(), rel=1e-5)
    for name in ("cov_max", "cov_top_concentration", "cov_std"):
        assert out["stats"][name] == pytest.approx(float(ref[name]), rel=1e-5), name


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_loss_add_and_pack_never_read_the_device(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make(3)
    control = Control(loss_mode=mode, clip_cov_lb=0.1)
    acc = StepAccumulator()

    with host_reads_forbidden(monkeypatch):
        for b in parts(batch, 2):
            lp, old, adv, mask = (
                b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask")
            )
            loss, s = policy_loss(lp, old, adv, mask, control)
            add(acc, b, loss=loss, loss_stats=s)
        packed = acc.pack()
    assert packed.ready()
    assert packed.unpack()["stats"]["tokens"] == int((batch["response_mask"] > 0).sum())


def test_empty_and_all_masked_steps() -> None:
    acc = StepAccumulator()
    assert acc.pack().unpack() == {"stats": {}, "histograms": {}, "top_tokens": [], "user": {}}
    b = make(4)
    b["response_mask"] = torch.zeros_like(b["response_mask"])
    add(acc, b)
    out = acc.pack().unpack()
    assert out["stats"] == {"tokens": 0}
    assert out["top_tokens"] == []
    assert sum(out["histograms"]["covariance"]["counts"]) == 0
    assert out["histograms"]["entropy"]["nonfinite"] == 0


def test_a_step_whose_advantages_are_all_equal_reports_no_nan() -> None:
    """GRPO groups that all scored alike: no covariance at all, which is no divergence."""
    batch = make(3)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    acc = StepAccumulator()
    add(acc, batch)
    stats = acc.pack().unpack()["stats"]
    assert stats["cov_mean"] == 0 and "cov_top_concentration" not in stats
    assert all(math.isfinite(v) for v in stats.values())


def test_non_finite_values_are_reported() -> None:
    b = make(5)
    b["entropy"][0, 0] = math.nan
    b["response_mask"][0, 0] = 1.0
    b["log_prob"][1, 0] = math.nan
    b["response_mask"][1, 0] = 1.0
    acc = StepAccumulator()
    add(acc, b)
    out = acc.pack().unpack()
    assert math.isnan(out["stats"]["entropy"]) and math.isnan(out["stats"]["logp_mean"])
    assert out["histograms"]["entropy"]["nonfinite"] == 1
    assert out["histograms"]["covariance"]["nonfinite"] == out["stats"]["tokens"]
    assert out["top_tokens"] == []  # no finite covariance to rank


def test_pack_resets_and_output_fits_the_wire_schema() -> None:
    acc = StepAccumulator()
    b = make(6)
    control = Control(loss_mode="clip_cov", clip_cov_lb=0.1)
    lp, old, adv, mask = (b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask"))
    loss, s = policy_loss(lp, old, adv, mask, control)
    add(acc, b, loss=loss, loss_stats=s)
    out = acc.pack().unpack()
    report = report_from_python({"step": 0, **out})
    assert report.histograms.entropy is not None and report.histograms.covariance is not None
    assert len(report.top_tokens) == 16
    assert out["user"]["selection_effective_ratio"] == pytest.approx(int(s.budget) / int(s.tokens))
    assert acc.pack().unpack()["stats"] == {}


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_reused_work_buffers_change_nothing(mode: str) -> None:
    # The accumulator's CPU work buffers serve one micro-batch and step after another, in the
    # same accumulator or (as the Monitor does) in a fresh one per step; sizes going up and
    # down must not leak anything from one into another.
    control = Control(loss_mode=mode, clip_cov_lb=0.1, clip_cov_ratio=0.01)
    steps = [[make(10, B=8, T=400), make(11, B=2, T=50)], [make(12, B=16, T=300)], [make(13)]]
    reused, work = StepAccumulator(), WorkBuffers()
    for step in steps:
        outputs = []
        for acc in (reused, StepAccumulator(work=work), StepAccumulator()):
            for b in step:
                lp, old, adv, mask = (
                    b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask")
                )
                g = torch.Generator().manual_seed(0)
                loss, s = policy_loss(lp, old, adv, mask, control, generator=g)
                add(acc, b, loss=loss, loss_stats=s)
            outputs.append(acc.pack().unpack())
        assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("mode", [None, "vanilla", "clip_cov", "kl_cov"])
def test_any_stride_gives_the_row_major_statistics(mode: str | None) -> None:
    batch = make(12, B=6, T=40)

    def column_major(t: torch.Tensor) -> torch.Tensor:
        return t.t().contiguous().t()  # same values, transposed storage

    strided = {k: column_major(v) for k, v in batch.items()}
    strided["response_mask"] = column_major(batch["response_mask"].bool())
    outs = []
    for b in (batch, strided):
        acc = StepAccumulator()
        kwargs: dict[str, Any] = {}
        if mode is not None:  # the loss's statistics passed on, as the Monitor does
            control = Control(loss_mode=mode, clip_cov_lb=0.0, kl_cov_ratio=0.1)
            g = torch.Generator().manual_seed(0)
            lp, old, adv, mask = (
                b[k] for k in ("log_prob", "old_log_prob", "advantages", "response_mask")
            )
            kwargs["loss"], kwargs["loss_stats"] = policy_loss(
                lp, old, adv, mask, control, generator=g
            )
        add(acc, b, **kwargs)
        outs.append(acc.pack().unpack())
    assert outs[0] == outs[1]
