"""Parity with verl's reference implementation (`pip install "entmon[verl]"`)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig, PolicyLossConfig

from client import selection
from client.control import Control
from client.covariance import COVARIANCE_DTYPE
from client.losses import Selection, clip_cov_loss, policy_loss, select_tokens
from client.stats import StepAccumulator

SHAPES = [(1, 7), (4, 50), (8, 300), (16, 1024)]


def verl_config(c: Control) -> ActorConfig:
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=c.clip_ratio_low,
        clip_ratio_high=c.clip_ratio_high,
        policy_loss=PolicyLossConfig(
            loss_mode=c.loss_mode,
            clip_cov_ratio=c.clip_cov_ratio,
            clip_cov_lb=c.clip_cov_lb,
            clip_cov_ub=c.clip_cov_ub,
            kl_cov_ratio=c.kl_cov_ratio,
            ppo_kl_coef=c.ppo_kl_coef,
        ),
    )


def verl_loss(
    c: Control, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    leaf = lp.detach().clone().requires_grad_()
    fn = getattr(core_algos, f"compute_policy_loss_{c.loss_mode}")
    loss, metrics = fn(old, leaf, adv, mask, config=verl_config(c))
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def ours(
    c: Control,
    lp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    leaf = lp.detach().clone().requires_grad_()
    loss, stats = policy_loss(leaf, old, adv, mask, c, **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, stats


def make(seed: int, B: int, T: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous() * 2
    lengths = torch.randint(max(T // 3, 1), T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).float()
    return lp, old, adv, mask


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [2e-4, 2e-3, 0.05])
def test_kl_cov_same_loss_and_gradient(shape: tuple[int, int], ratio: float) -> None:
    lp, old, adv, mask = make(sum(shape), *shape)
    c = Control(loss_mode="kl_cov", kl_cov_ratio=ratio, ppo_kl_coef=1.0)
    v_loss, v_grad, v_metrics = verl_loss(c, lp, old, adv, mask)
    o_loss, o_grad, s = ours(c, lp, old, adv, mask)
    torch.testing.assert_close(o_loss, v_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(o_grad, v_grad, rtol=1e-6, atol=1e-9)
    assert float(s.abs_log_ratio_mean) == pytest.approx(v_metrics["actor/ppo_kl"], rel=1e-5)
    assert int(s.penalised) == max(int(ratio * mask.sum().item()), 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_vanilla_same_loss_gradient_and_clip_fraction(shape: tuple[int, int]) -> None:
    lp, old, adv, mask = make(sum(shape) + 1, *shape)
    c = Control(loss_mode="vanilla", clip_ratio_low=0.2, clip_ratio_high=0.28)
    v_loss, v_grad, v_metrics = verl_loss(c, lp, old, adv, mask)
    o_loss, o_grad, s = ours(c, lp, old, adv, mask)
    torch.testing.assert_close(o_loss, v_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(o_grad, v_grad, rtol=1e-6, atol=1e-9)
    assert float(s.ppo_clip_frac) == pytest.approx(v_metrics["actor/pg_clipfrac"], abs=1e-6)
    assert float(-s.log_ratio_mean) == pytest.approx(v_metrics["actor/ppo_kl"], abs=1e-6)


def reference_selection(
    c: Control,
    lp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    seed: int,
) -> Selection:
    """verl's own draw, given our candidate set: the candidates in row-major order and a prefix
    of a global-RNG `randperm`, from the RNG state verl's loss starts in."""
    g = torch.Generator().manual_seed(0)
    ours_sel = select_tokens(lp, old, adv, mask, c, generator=g, scope="micro_batch")
    assert ours_sel is not None
    torch.manual_seed(seed)
    idx = torch.nonzero(ours_sel.candidates)
    n = max(int(c.clip_cov_ratio * mask.sum().item()), 1)
    picked = torch.zeros_like(ours_sel.candidates)
    if len(idx):
        chosen = idx[torch.randperm(len(idx))[: min(n, len(idx))]]
        picked[chosen[:, 0], chosen[:, 1]] = True
    return Selection(picked, ours_sel.candidates, torch.tensor(n))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [2e-4, 0.01, 0.2])
def test_clip_cov_same_loss_and_gradient_given_the_same_tokens(
    shape: tuple[int, int], ratio: float
) -> None:
    lp, old, adv, mask = make(sum(shape) + 2, *shape)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=ratio, clip_cov_lb=0.2, clip_cov_ub=5.0)
    torch.manual_seed(1234)
    v_loss, v_grad, v_metrics = verl_loss(c, lp, old, adv, mask)
    sel = reference_selection(c, lp, old, adv, mask, seed=1234)
    leaf = lp.detach().clone().requires_grad_()
    o_loss, s = clip_cov_loss(
        leaf, old, adv, mask, clip_cov_ratio=ratio, clip_cov_lb=0.2, clip_cov_ub=5.0,
        selection=sel,
    )  # fmt: skip
    (o_grad,) = torch.autograd.grad(o_loss, leaf)
    torch.testing.assert_close(o_loss.detach(), v_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(o_grad, v_grad, rtol=1e-6, atol=1e-9)
    detached_frac = int(s.detached) / mask.sum().item()
    assert detached_frac == pytest.approx(v_metrics["actor/pg_clipfrac"], abs=1e-6)
    # verl detaches exactly the tokens whose gradient it zeroes among our candidates.
    v_picked = sel.candidates & (v_grad == 0)
    assert torch.equal(v_picked, sel.picked)


def verl_picks(
    c: Control, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The tokens verl detached: zero gradient although valid, unclipped, and A != 0."""
    _, grad, _ = verl_loss(c, lp, old, adv, mask)
    return grad == 0


@pytest.mark.parametrize("shape", [(4, 50), (8, 300)])
def test_clip_cov_same_selection_distribution(shape: tuple[int, int]) -> None:
    lp, old, adv, mask = make(sum(shape) + 3, *shape)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=0.01, clip_cov_lb=0.2, clip_cov_ub=5.0)
    sel = select_tokens(lp, old, adv, mask, c, scope="micro_batch")
    assert sel is not None
    candidates = sel.candidates
    C = int(candidates.sum())
    n = max(int(0.01 * mask.sum().item()), 1)
    assert 2 * n < C  # the draw matters
    draws = 300
    ours_hits = torch.zeros_like(lp)
    verl_hits = torch.zeros_like(lp)
    g = torch.Generator().manual_seed(0)
    for seed in range(draws):
        mine = select_tokens(lp, old, adv, mask, c, generator=g, scope="micro_batch")
        assert mine is not None
        torch.manual_seed(seed)
        theirs = verl_picks(c, lp, old, adv, mask) & candidates
        # Same count and same candidate set on every draw...
        assert int(mine.picked.sum()) == int(theirs.sum()) == min(n, C)
        assert not (mine.picked & ~candidates).any() and not (theirs & ~candidates).any()
        ours_hits += mine.picked
        verl_hits += theirs
    # ...and each candidate is picked with probability n / C by both (binomial, 5 sigma).
    p = n / C
    sigma = (draws * p * (1 - p)) ** 0.5
    for hits in (ours_hits, verl_hits):
        assert ((hits[candidates] - draws * p).abs() < 5 * sigma + 1).all()
        assert int(hits[~candidates].sum()) == 0


def grpo_ties(seed: int) -> tuple[torch.Tensor, ...]:
    """A GRPO-like batch full of equal covariances: advantages +-1 per completion, log-probs
    from a few values (0.0: confident tokens), right padding."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 12
    lp = torch.tensor([0.0, -0.5, -1.0, -2.0])[torch.randint(0, 4, (B, T), generator=g)]
    old = lp + torch.tensor([0.0, 0.25, -0.5])[torch.randint(0, 3, (B, T), generator=g)]
    adv = torch.tensor([1.0, -1.0])[torch.randint(0, 2, (B, 1), generator=g)].expand(B, T)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    return lp, old, adv.contiguous(), (torch.arange(T) < lengths).float()


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_kl_cov_chooses_among_equal_covariances_as_verl_does(ratio: float) -> None:
    c = Control(loss_mode="kl_cov", kl_cov_ratio=ratio, ppo_kl_coef=1.0)
    for seed in range(40):
        lp, old, adv, mask = grpo_ties(seed)
        v_loss, v_grad, _ = verl_loss(c, lp, old, adv, mask)
        o_loss, o_grad, _ = ours(c, lp, old, adv, mask)
        assert torch.equal(o_loss, v_loss), seed
        assert torch.equal(o_grad, v_grad), seed


@pytest.mark.parametrize("exact_path", [True, False])
def test_kl_cov_spends_no_budget_on_padding_when_a_covariance_is_minus_inf(
    exact_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exact_path:  # the device's path (no host read: no fallback to verl's own steps)
        monkeypatch.setattr(selection, "_unique_top", lambda values, K: True)
    lp = torch.tensor([[-math.inf, -1.0, -2.0, -0.5, -0.7]])
    old = torch.tensor([[-1.0, -1.1, -2.2, -0.4, -0.7]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    c = Control(loss_mode="kl_cov", kl_cov_ratio=1.0, ppo_kl_coef=1.0)
    _, v_grad, _ = verl_loss(c, lp, old, adv, mask)
    _, o_grad, s = ours(c, lp, old, adv, mask)
    assert int(s.penalised) == 4  # all four valid tokens, as verl
    torch.testing.assert_close(o_grad, v_grad, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_any_stride_gives_the_row_major_result(mode: str) -> None:
    lp, old, adv, mask = make(11, 6, 4)
    c = Control(loss_mode=mode, clip_cov_ratio=0.5, clip_cov_lb=-10.0, kl_cov_ratio=0.3)

    def column_major(t: torch.Tensor) -> torch.Tensor:
        return t.t().contiguous().t()  # same values, transposed storage

    want_loss, want_grad, _ = ours(c, lp, old, adv, mask, generator=torch.Generator())
    for strided in (
        (lp, old, adv, column_major(mask.bool())),
        tuple(column_major(t) for t in (lp, old, adv, mask)),
        (lp, old, adv[:, :1].expand(6, 4), mask),  # stride 0 along the row
    ):
        got_loss, got_grad, _ = ours(c, *strided, generator=torch.Generator())
        assert torch.equal(got_loss, want_loss) and torch.equal(got_grad, want_grad)


def test_an_overflow_at_a_detached_clip_cov_token_shows_as_nan() -> None:
    lp, old = torch.tensor([[-0.1, -3.0]]), torch.tensor([[-100.0, -3.0]])  # ratio e^99.9: inf
    adv, mask = torch.tensor([[-1.0, -3.0]]), torch.ones(1, 2)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=-1e30, clip_cov_ub=1e30)
    v_loss, _, _ = verl_loss(c, lp, old, adv, mask)
    o_loss, _, s = ours(c, lp, old, adv, mask)
    assert int(s.detached) == 2
    assert math.isnan(float(v_loss)) and math.isnan(float(o_loss))
    acc = StepAccumulator()  # ...and the step's statistics say so
    acc.add(lp, old, adv, mask, loss=o_loss, loss_stats=s)
    assert math.isnan(acc.pack().unpack()["stats"]["policy_loss"])


@pytest.mark.parametrize(
    ("dtype", "lb", "ub"),
    [
        # token 0: 0.6640625 in bf16, inside (ub too becomes bf16 in verl: 0.66796875);
        # 0.6666666 in float32, outside
        (torch.bfloat16, 0.5, 0.6666),
        # token 0: 0.6669922 in fp16, inside (lb in fp16: 0.6665039); 0.6666666 outside
        (torch.float16, 0.66668, 1.0),
    ],
)
def test_clip_cov_candidates_of_half_precision_inputs_are_chosen_in_float32(
    dtype: torch.dtype, lb: float, ub: float
) -> None:
    # Covariances (1 - 1/3) * (0 - (-1)): 2/3 rounds to 0.6666666 in float32 (COVARIANCE_DTYPE,
    # what entmon compares with the bounds whatever the input dtype) but to 0.6640625 in bf16
    # and 0.6669922 in fp16 (verl computes in the input dtype): the bound decides otherwise.
    lp, adv = torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    old, mask = lp.clone(), torch.ones(1, 3)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=lb, clip_cov_ub=ub)
    half = [t.to(dtype) for t in (lp, old, adv)]
    sel = select_tokens(*half, mask, c, generator=torch.Generator(), scope="micro_batch")
    sel32 = select_tokens(lp, old, adv, mask, c, generator=torch.Generator(), scope="micro_batch")
    assert sel is not None and sel32 is not None
    assert torch.float32 == COVARIANCE_DTYPE
    assert torch.equal(sel.candidates, sel32.candidates)  # the float32 choice...
    assert not sel.candidates[0, 0]
    _, v_grad, _ = verl_loss(c, *half, mask)  # ...and verl's, in the dtype: token 0 detached
    assert v_grad[0, 0] == 0
    _, v_grad32, _ = verl_loss(c, lp, old, adv, mask)  # verl on float32 inputs agrees with us
    assert v_grad32[0, 0] != 0
