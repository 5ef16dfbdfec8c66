"""The client on CUDA against the same computation on CPU (`make gpu-check` runs these).

Inputs are dyadic where it makes the comparison exact: log-probs on a grid of 2**-10 in (-4, 0]
and advantages on a grid of 2**-4, over 2048 tokens, so every partial sum is a float32 number
and the means, the per-token covariance, its histogram and its ranking are the same bits on
both devices whatever the order of the reductions. What still differs is stated per test:
sums of products (float32 reductions in another order: relative 1e-5) and `exp` (CUDA's and
the CPU's differ by an ulp or two: relative 1e-5 on the losses and gradients).

CUDA-only branches of the client and the test that runs each:
- histograms `_count`: `index_add_` instead of `bincount` -> test_histograms_*;
- histograms `_upper_table` / `_cov_shift`: device tables, copied without a host sync ->
  test_histograms_*, and tests/client/test_cuda_sync.py from the first step;
- topk `top_k`: `torch.topk` instead of the chunked route -> test_top_k_*;
- stats `WorkBuffers.get`: fresh device buffers -> test_step_statistics_*;
- stats `pack` / `PackedStep`: pinned host copy, `non_blocking`, a CUDA event, `ready`,
  `unpack`'s wait -> test_step_statistics_*, test_packed_step_*;
- handoff `FinishedStep`: the event on the training stream, the reporter thread's wait on its
  own stream under `torch.cuda.device` -> test_finished_step_* (the device switch on two GPUs);
- selection `_random_keys` on the device's generator -> test_clip_cov_*;
- entropy on the device -> test_entropy_*;
- monitor: the device of the step's first micro-batch -> tests/client/test_cuda_sync.py;
- control_sync beside an NCCL default group -> tests/client/test_cuda_nccl.py.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import torch

from client.control import Control
from client.covariance import token_covariance
from client.entropy import token_entropy
from client.handoff import FinishedStep
from client.histograms import (
    bucket_counts,
    bucket_counts_joint,
    bucket_counts_unmasked,
    bucket_indices,
)
from client.losses import policy_loss
from client.stats import StepAccumulator, WorkBuffers
from client.topk import top_k
from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, LAYOUTS

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
REL = 1e-5  # float32 reductions in another order, or CUDA's exp against the CPU's


def dyadic_batch(seed: int, B: int = 16, T: int = 128) -> dict[str, torch.Tensor]:
    """A GRPO-like micro-batch whose sums are exact in float32 (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.randint(0, 4096, (B, T), generator=g).float() / 1024  # (-4, 0], grid 2**-10
    lengths = torch.randint(T // 4, T + 1, (B, 1), generator=g)
    return {
        "log_prob": lp,
        # log-ratios on a grid of 1/32 within +-0.25: none within a few ulps of a clip bound
        "old_log_prob": lp + torch.randint(-8, 9, (B, T), generator=g).float() / 32,
        "advantages": (torch.randint(-48, 49, (B, 1), generator=g).float() / 16)
        .expand(B, T)
        .contiguous(),
        "response_mask": (torch.arange(T) < lengths).float(),
        "entropy": torch.rand(B, T, generator=g) * 5,
        "token_ids": torch.randint(0, 151_936, (B, T), generator=g),
    }


def on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def assert_no_tie_at(values: torch.Tensor, k: int) -> None:
    """Precondition of an exact ranking comparison: the k-th and (k+1)-th largest differ."""
    top = torch.topk(values.reshape(-1), k + 1).values
    assert top[k - 1] > top[k], f"seed gives a tie at rank {k}: pick another"


# --- entropy ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_on_the_gpu_matches_the_cpu(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(1000, 4099, generator=g) * 4).to(dtype)  # rows not a chunk multiple
    logits[3, :2000] = -torch.inf  # a masked vocabulary
    logits[7, 5] = torch.nan  # a NaN logit: NaN entropy on both
    cpu = token_entropy(logits, chunk_size=256)
    gpu = token_entropy(logits.to(CUDA), chunk_size=256)
    assert gpu.device.type == CUDA.type and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=REL, atol=1e-5, equal_nan=True)
    assert gpu[7].isnan().item() and not gpu[3].isnan().item()


# --- covariance ------------------------------------------------------------------------


def test_covariance_on_the_gpu_is_the_cpu_bit_for_bit_on_dyadic_inputs() -> None:
    b = dyadic_batch(1)
    args = ("log_prob", "advantages", "response_mask")
    cpu = token_covariance(*(b[k] for k in args))
    gpu = token_covariance(*(b[k].to(CUDA) for k in args))
    assert torch.equal(gpu.cpu(), cpu)


def test_covariance_on_the_gpu_matches_the_cpu_on_random_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    lp, adv = -torch.rand(8, 300, generator=g) * 3, torch.randn(8, 300, generator=g)
    mask = (torch.rand(8, 300, generator=g) > 0.3).float()
    cpu = token_covariance(lp, adv, mask)
    gpu = token_covariance(lp.to(CUDA), adv.to(CUDA), mask.to(CUDA))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=REL, atol=1e-6)


# --- histograms: the float32 bit view, the float64 estimate, counting with index_add_ ----


def binary_search(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The reference bucketing on CPU: le semantics, NaN to B."""
    bounds = torch.tensor(LAYOUTS[layout], dtype=torch.float64)
    k = torch.bucketize(x.double(), bounds)
    return k.masked_fill_(x.isnan(), len(LAYOUTS[layout]) + 1)


def every_float32() -> torch.Tensor:
    """400k random bit patterns (NaN, inf, subnormals, both signs), then the 200 float32
    neighbours on each side of every bound of both layouts."""
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-(2**31), 2**31, (400_000,), generator=g, dtype=torch.int64)
    near = [
        torch.tensor(b, dtype=torch.float32).view(torch.int32) + torch.arange(-200, 201)
        for layout in LAYOUTS
        for b in LAYOUTS[layout]
        if math.isfinite(b)
    ]
    return torch.cat([bits.to(torch.int32), *near]).view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_histograms_bucket_on_the_gpu_like_the_reference(layout: str, dtype: torch.dtype) -> None:
    # float32: the bit-view estimate; float64: the logarithm estimate; both corrected by the
    # table lookup, then counted with index_add_ (bincount would size itself with a host sync)
    x = every_float32().to(dtype)
    expected = binary_search(x, layout)
    assert torch.equal(bucket_indices(x.to(CUDA), layout).cpu(), expected)
    counts = bucket_counts_unmasked(x.to(CUDA), layout)
    assert counts.device.type == CUDA.type
    assert torch.equal(counts.cpu(), bucket_counts_unmasked(x, layout))
    mask = torch.arange(x.numel()) % 3 > 0
    masked = bucket_counts(x.to(CUDA), layout, mask.to(CUDA))
    assert torch.equal(masked.cpu(), bucket_counts(x, layout, mask))


def test_histograms_joint_counts_on_the_gpu_equal_the_cpu() -> None:
    x = every_float32()
    ent, cov = x.abs(), x.flip(0)
    cpu = bucket_counts_joint(ent, ENTROPY_LAYOUT, cov, COVARIANCE_LAYOUT)
    scratch = [torch.empty(x.numel(), device=CUDA) for _ in range(4)]
    gpu = bucket_counts_joint(
        ent.to(CUDA), ENTROPY_LAYOUT, cov.to(CUDA), COVARIANCE_LAYOUT, scratch=scratch
    )
    assert torch.equal(gpu.cpu(), cpu)


# --- top-k -----------------------------------------------------------------------------


def test_top_k_on_the_gpu_equals_the_chunked_cpu_route() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randperm(1 << 20, generator=g).float()  # distinct: one right answer
    x[12345] = torch.nan  # NaN ranks first on both
    for k in (1, 16, 209, 2000):
        cpu_values, cpu_index = top_k(x, k)  # the chunked route (N >= 2**16, k small)
        gpu_values, gpu_index = top_k(x.to(CUDA), k)
        torch.testing.assert_close(gpu_values.cpu(), cpu_values, equal_nan=True)
        assert torch.equal(gpu_index.cpu(), cpu_index)


# --- the three losses ------------------------------------------------------------------


def loss_on(device: torch.device, b: dict[str, torch.Tensor], control: Control) -> dict[str, Any]:
    lp = b["log_prob"].detach().to(device).requires_grad_()  # a leaf of its own on each device
    loss, stats = policy_loss(
        lp, *(b[k].to(device) for k in ("old_log_prob", "advantages", "response_mask")), control
    )
    loss.backward()
    assert lp.grad is not None
    counts = ("tokens", "candidates", "detached", "penalised", "budget")
    return {
        "loss": loss.detach().cpu(),
        "grad": lp.grad.cpu(),
        "counts": [int(getattr(stats, name)) for name in counts],
        "clip_frac": stats.ppo_clip_frac.cpu(),
    }


CONTROLS = {
    "vanilla": Control(loss_mode="vanilla"),
    # a budget above the candidates: all of them are detached, whatever the random keys
    "clip_cov": Control(loss_mode="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=0.5),
    "kl_cov": Control(loss_mode="kl_cov", kl_cov_ratio=0.01),
}


@pytest.mark.parametrize("mode", sorted(CONTROLS))
def test_losses_on_the_gpu_match_the_cpu(mode: str) -> None:
    b = dyadic_batch(5)
    control = CONTROLS[mode]
    if mode == "kl_cov":  # the penalised set is the same only without a tie at its edge
        cov = token_covariance(b["log_prob"], b["advantages"], b["response_mask"])
        n = int(b["response_mask"].sum())
        assert_no_tie_at(cov.masked_fill(b["response_mask"] == 0, -math.inf), int(0.01 * n))
    cpu, gpu = loss_on(torch.device("cpu"), b, control), loss_on(CUDA, b, control)
    assert gpu["counts"] == cpu["counts"]  # the same tokens selected, clipped, counted
    if mode != "vanilla":
        assert cpu["counts"][2] + cpu["counts"][3] > 0, "the selection picked nothing"
    torch.testing.assert_close(gpu["clip_frac"], cpu["clip_frac"], rtol=0, atol=0)
    torch.testing.assert_close(gpu["loss"], cpu["loss"], rtol=REL, atol=1e-7)
    torch.testing.assert_close(gpu["grad"], cpu["grad"], rtol=REL, atol=1e-9)


def test_clip_cov_random_pick_on_the_gpu_keeps_its_budget() -> None:
    # the default budget is below the candidates: the pick is random, so only its size and
    # its eligibility can match the CPU's
    b = on(CUDA, dyadic_batch(6))
    control = Control(loss_mode="clip_cov", clip_cov_ratio=2e-3, clip_cov_lb=0.5)
    _, stats = policy_loss(
        b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"], control
    )
    assert int(stats.candidates) > int(stats.budget) > 0
    assert int(stats.detached) == int(stats.budget)


# --- step statistics -------------------------------------------------------------------


def step_statistics(device: torch.device, parts: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    acc = StepAccumulator(work=WorkBuffers())
    for b in parts:
        b = on(device, b)
        loss, stats = policy_loss(
            b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
            CONTROLS["kl_cov"],
        )  # fmt: skip
        acc.add(
            b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
            entropy=b["entropy"], loss=loss, loss_stats=stats, token_ids=b["token_ids"],
        )  # fmt: skip
    packed = acc.pack()
    if device.type == "cuda":
        assert packed._host is not None and packed._host.is_pinned()
        assert packed._event is not None
    return packed.unpack()


def sorted_top(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(tokens, key=lambda t: (-t["cov"], t["position"], t.get("token_id", 0)))


def assert_same_statistics(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    """Counts, histograms and top tokens bit for bit; float statistics to REL."""
    assert gpu["histograms"] == cpu["histograms"]
    assert sorted_top(gpu["top_tokens"]) == sorted_top(cpu["top_tokens"])
    assert gpu["stats"].keys() == cpu["stats"].keys()
    for name, value in cpu["stats"].items():
        if isinstance(value, int):
            assert gpu["stats"][name] == value, name
        else:
            assert gpu["stats"][name] == pytest.approx(value, rel=REL, abs=1e-7), name


def test_step_statistics_on_the_gpu_match_the_cpu() -> None:
    parts = [dyadic_batch(seed) for seed in (7, 8, 9)]  # three micro-batches
    all_cov = torch.cat(
        [
            token_covariance(b["log_prob"], b["advantages"], b["response_mask"])
            .masked_fill(b["response_mask"] == 0, -math.inf)
            .reshape(-1)
            for b in parts
        ]
    )
    assert_no_tie_at(all_cov, 16)  # the top tokens are then one set on both devices
    cpu = step_statistics(torch.device("cpu"), parts)
    gpu = step_statistics(CUDA, parts)
    assert cpu["histograms"] and len(cpu["top_tokens"]) == 16
    assert_same_statistics(gpu, cpu)


def test_work_buffers_on_the_gpu_are_fresh_device_tensors() -> None:
    work = WorkBuffers()
    a, b = work.get(0, 1000, CUDA), work.get(0, 1000, CUDA)
    assert a.device.type == CUDA.type and a.numel() == 1000 and a.dtype == torch.float32
    assert a.data_ptr() != b.data_ptr()  # the caching allocator reuses, not the slot


def test_packed_step_is_ready_once_the_copy_is_done() -> None:
    b = on(CUDA, dyadic_batch(10))
    acc = StepAccumulator()
    acc.add(b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"])
    # About a second of GPU time: the copy queues behind it, and the host packs in far less
    torch.cuda._sleep(2_000_000_000)
    packed = acc.pack()
    assert not packed.ready()  # the host copy waits behind the sleep
    stats = packed.unpack()["stats"]  # waits for the event
    assert packed.ready() and stats["tokens"] == int(b["response_mask"].sum())


def test_finished_step_unpacked_on_another_thread_waits_for_a_side_stream() -> None:
    # The training thread works on its own stream; the reporter thread's kernels (pack) must
    # come after the step's, or they read the inputs before the side stream wrote them.
    parts = [dyadic_batch(seed) for seed in (11, 12)]
    expected = step_statistics(torch.device("cpu"), parts)
    side = torch.cuda.Stream()
    staged = [on(CUDA, b) for b in parts]
    torch.cuda.synchronize()
    acc = StepAccumulator()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # the step's kernels finish long after they are queued
        for b in staged:
            b = {k: v.clone() for k, v in b.items()}  # written on the side stream, after the sleep
            loss, stats = policy_loss(
                b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
                CONTROLS["kl_cov"],
            )  # fmt: skip
            acc.add(
                b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
                entropy=b["entropy"], loss=loss, loss_stats=stats, token_ids=b["token_ids"],
            )  # fmt: skip
        finished = FinishedStep(acc, CUDA)
    result: dict[str, Any] = {}
    reporter = threading.Thread(target=lambda: result.update(finished.unpack()))
    reporter.start()
    reporter.join(120)
    assert not reporter.is_alive()
    assert_same_statistics(result, expected)


@pytest.mark.cuda(devices=2)
def test_finished_step_on_the_second_gpu_unpacks_on_a_thread_whose_device_is_the_first() -> None:
    # the reporter thread's current device is cuda:0; the step's stream and event are cuda:1's
    parts = [dyadic_batch(seed) for seed in (13, 14)]
    expected = step_statistics(torch.device("cpu"), parts)
    second = torch.device("cuda", 1)
    acc = StepAccumulator()
    for b in parts:
        b = on(second, b)
        loss, stats = policy_loss(
            b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
            CONTROLS["kl_cov"],
        )  # fmt: skip
        acc.add(
            b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
            entropy=b["entropy"], loss=loss, loss_stats=stats, token_ids=b["token_ids"],
        )  # fmt: skip
    with torch.cuda.device(second):
        finished = FinishedStep(acc, second)
    result: dict[str, Any] = {}

    def reporter() -> None:
        torch.cuda.set_device(0)
        result.update(finished.unpack())

    thread = threading.Thread(target=reporter)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert_same_statistics(result, expected)


@pytest.mark.cuda(devices=2)
def test_pack_on_the_second_gpu_waits_for_its_copy_whatever_the_current_device() -> None:
    # the event must follow the copy on the step's device, not on the current one
    b = dyadic_batch(15)
    expected = step_statistics(torch.device("cpu"), [b])
    second = torch.device("cuda", 1)
    b = on(second, b)
    loss, stats = policy_loss(
        b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"], CONTROLS["kl_cov"]
    )
    acc = StepAccumulator()
    acc.add(
        b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
        entropy=b["entropy"], loss=loss, loss_stats=stats, token_ids=b["token_ids"],
    )  # fmt: skip
    torch.cuda.set_device(0)
    with torch.cuda.device(second):
        torch.cuda._sleep(2_000_000_000)  # the copy to the host queues behind a second of work
    assert_same_statistics(acc.pack().unpack(), expected)
