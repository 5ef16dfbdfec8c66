from __future__ import annotations

import math

import pytest
import torch

from client.control import Control
from client.covariance import token_covariance
from client.errors import ControlError
from client.losses import (
    clip_cov_loss,
    kl_cov_loss,
    policy_loss,
    policy_token_losses,
    select_tokens,
    vanilla_ppo_loss,
)


def make(
    seed: int, B: int = 8, T: int = 64, *, spread: float = 0.3, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = lp.detach() + spread * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous() * 2
    lengths = torch.full((B, 1), T) if full else torch.randint(1, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).float()
    return lp, old, adv, mask


def grad_of(loss: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, lp)
    return g


def wide_clip() -> dict[str, float]:
    return {"clip_ratio_low": 10.0, "clip_ratio_high": 10.0}  # PPO clip never binds


def test_budget_floor_of_one_on_a_tiny_batch() -> None:
    lp, old, adv, mask = make(0, B=1, T=10, full=True)
    _, kl = kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=2e-4)
    assert int(kl.budget) == 1 and int(kl.penalised) == 1
    _, cc = clip_cov_loss(lp, old, adv, mask, clip_cov_ratio=2e-4, clip_cov_lb=-1e9, **wide_clip())
    assert int(cc.budget) == 1 and int(cc.detached) == 1 and int(cc.candidates) == 10


@pytest.mark.parametrize(("n_valid", "penalised"), [(1000, 2), (999, 1), (1500, 3), (10, 1)])
def test_kl_cov_ratio_is_a_fraction_with_floor(n_valid: int, penalised: int) -> None:
    lp, old, adv, _ = make(1, B=4, T=500)
    mask = torch.zeros(4, 500)
    mask.view(-1)[:n_valid] = 1
    _, s = kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=2e-3)
    assert int(s.tokens) == n_valid and int(s.penalised) == penalised


def test_kl_cov_penalises_the_top_covariance_tokens() -> None:
    lp, old, adv, mask = make(2, B=16, T=128)
    ratio = 0.01
    loss, s = kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=ratio, ppo_kl_coef=1.0)
    valid = mask > 0
    cov = token_covariance(lp, adv, mask).masked_fill(~valid, -math.inf)
    K = max(int(ratio * int(valid.sum())), 1)
    top = torch.zeros_like(valid).view(-1)
    top[torch.topk(cov.view(-1), K).indices] = True
    sel = select_tokens(lp, old, adv, mask, Control(loss_mode="kl_cov", kl_cov_ratio=ratio))
    assert sel is not None and torch.equal(sel.picked.view(-1), top)
    log_ratio = (lp - old).detach()
    per_token = -adv * torch.exp(log_ratio) + top.view_as(lp) * log_ratio.abs()
    want = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-6)
    want_pen = log_ratio.abs().view(-1)[top].mean()
    torch.testing.assert_close(s.penalised_abs_log_ratio_mean, want_pen)


def test_on_policy_kl_cov_is_the_unclipped_policy_gradient() -> None:
    lp, _, adv, mask = make(3, spread=0.0)
    old = lp.detach().clone()
    loss, s = kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=0.05, ppo_kl_coef=1.0)
    n = mask.sum()
    torch.testing.assert_close(loss.detach(), -(adv * mask).sum() / n)
    torch.testing.assert_close(grad_of(loss, lp), -adv * mask / n)
    assert int(s.penalised) > 0 and float(s.penalised_abs_log_ratio_mean) == 0.0


def test_detached_tokens_have_exactly_zero_gradient() -> None:
    lp, old, adv, mask = make(4)
    loss, s = clip_cov_loss(
        lp, old, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.0, clip_cov_ub=100.0, **wide_clip()
    )
    sel = select_tokens(
        lp, old, adv, mask,
        Control(loss_mode="clip_cov", clip_cov_ratio=0.05, clip_cov_lb=0.0, clip_cov_ub=100.0,
                **wide_clip()),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert sel is not None
    grad = grad_of(loss, lp)
    detached = grad.eq(0) & (mask > 0)
    assert int(detached.sum()) == int(s.detached) > 0
    loss2, _ = clip_cov_loss(lp, old, adv, mask, selection=sel, clip_cov_ratio=0.05, **wide_clip())
    grad2 = grad_of(loss2, lp)
    assert torch.equal(grad2[sel.picked], torch.zeros(int(sel.picked.sum())))
    assert (grad2[(mask > 0) & ~sel.picked] != 0).all()
    assert (grad2[mask == 0] == 0).all()


def test_detached_tokens_still_count_in_the_token_mean() -> None:
    lp, old, adv, mask = make(5)
    knobs = {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.0, "clip_cov_ub": 100.0, **wide_clip()}
    loss, _ = clip_cov_loss(lp, old, adv, mask, generator=torch.Generator().manual_seed(1), **knobs)
    sel = select_tokens(
        lp, old, adv, mask, Control(loss_mode="clip_cov", **knobs),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert sel is not None
    per_token = -adv * torch.exp(lp - old) * (mask > 0) * ~sel.picked
    torch.testing.assert_close(loss.detach(), per_token.detach().sum() / mask.sum())


def test_seeded_generator_gives_identical_selections() -> None:
    lp, old, adv, mask = make(6, B=32, T=128)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=0.01, clip_cov_lb=0.0, clip_cov_ub=100.0)
    picks = [
        select_tokens(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert picks[0] is not None and picks[1] is not None and picks[2] is not None
    assert torch.equal(picks[0].picked, picks[1].picked)
    assert not torch.equal(picks[0].picked, picks[2].picked)
    assert int(picks[0].picked.sum()) == int(picks[2].picked.sum()) == int(picks[0].budget)


def test_empty_candidate_set_gives_the_plain_loss() -> None:
    lp, old, adv, mask = make(7)
    loss, s = clip_cov_loss(lp, old, adv, mask, clip_cov_lb=1e6, clip_cov_ub=2e6)
    plain, _ = vanilla_ppo_loss(lp, old, adv, mask, clip_ratio_c=None)
    assert int(s.candidates) == 0 and int(s.detached) == 0
    assert torch.equal(loss, plain)


def test_picked_tokens_are_candidates_and_candidates_follow_the_rules() -> None:
    lp, old, adv, mask = make(8, B=16, T=128, spread=0.5)
    c = Control(loss_mode="clip_cov", clip_cov_ratio=0.02, clip_cov_lb=0.5, clip_cov_ub=2.0)
    sel = select_tokens(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(0))
    assert sel is not None
    ratio = torch.exp(lp - old).detach()
    clipped = -adv * ratio.clamp(0.8, 1.2) > -adv * ratio
    cov = token_covariance(lp, adv, mask)
    want = (mask > 0) & ~clipped & (cov > 0.5) & (cov < 2.0)
    assert torch.equal(sel.candidates, want)
    assert not (sel.picked & ~sel.candidates).any()
    n = max(int(0.02 * int(mask.sum())), 1)
    assert int(sel.picked.sum()) == min(n, int(want.sum()))


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_all_masked_batch_gives_a_finite_zero_loss(mode: str) -> None:
    lp, old, adv, _ = make(9)
    mask = torch.zeros_like(adv)
    loss, s = policy_loss(lp, old, adv, mask, Control(loss_mode=mode))
    assert float(loss.detach()) == 0.0
    assert torch.equal(grad_of(loss, lp), torch.zeros_like(lp))
    assert int(s.tokens) == 0 and int(s.detached) == 0 and int(s.penalised) == 0
    assert float(s.abs_log_ratio_mean) == 0.0 and float(s.ppo_clip_frac) == 0.0


def test_junk_in_padding_does_not_reach_loss_or_gradient() -> None:
    lp, old, adv, mask = make(10)
    junk_old = torch.where(mask > 0, old, torch.full_like(old, -math.inf))
    junk_adv = torch.where(mask > 0, adv, torch.full_like(adv, math.nan))
    for mode in ("vanilla", "clip_cov", "kl_cov"):
        c = Control(loss_mode=mode)
        clean, _ = policy_loss(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(0))
        junk, _ = policy_loss(
            lp, junk_old, junk_adv, mask, c, generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(clean, junk)
        assert torch.equal(grad_of(clean, lp), grad_of(junk, lp))


def test_overflowing_ratio_is_reported_not_hidden() -> None:
    lp, old, adv, mask = make(11)
    old = old.clone()
    old[0, 0] = -200.0  # log-ratio ~ +200: exp overflows, as in the reference
    mask[0, 0] = 1.0
    loss, s = kl_cov_loss(lp, old, adv, mask)
    assert not math.isfinite(float(loss.detach()))
    log_ratio = (lp - old).detach()[mask > 0]
    torch.testing.assert_close(s.abs_log_ratio_mean, log_ratio.abs().mean())


def test_ratio_zero_switches_the_intervention_off() -> None:
    lp, old, adv, mask = make(12)
    _, kl = kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=0.0)
    _, cc = clip_cov_loss(lp, old, adv, mask, clip_cov_ratio=0.0, clip_cov_lb=-1e9)
    assert int(kl.penalised) == 0 and int(cc.detached) == 0


def test_policy_loss_dispatches_on_the_control() -> None:
    lp, old, adv, mask = make(13)
    for mode, fn in (("vanilla", vanilla_ppo_loss), ("kl_cov", kl_cov_loss)):
        got, s = policy_loss(lp, old, adv, mask, Control(loss_mode=mode))
        want, _ = fn(lp, old, adv, mask)
        assert torch.equal(got, want) and s.loss_mode == mode


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_per_token_losses_are_zero_when_masked_and_their_token_mean_is_the_loss(mode: str) -> None:
    lp, old, adv, mask = make(15, spread=0.5)
    c = Control(loss_mode=mode, clip_cov_ratio=0.05, clip_cov_lb=0.0, kl_cov_ratio=0.05)
    per_token, s = policy_token_losses(
        lp, old, adv, mask, c, generator=torch.Generator().manual_seed(0)
    )
    loss, _ = policy_loss(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(0))
    assert per_token.shape == lp.shape
    assert torch.equal(per_token.detach()[mask == 0], torch.zeros(int((mask == 0).sum())))
    torch.testing.assert_close(per_token.sum() / mask.sum(), loss, rtol=0, atol=0)
    assert int(s.tokens) == int(mask.sum())
    if mode != "vanilla":
        assert int(s.detached) + int(s.penalised) > 0  # the selection is part of the losses


def test_ppo_statistics() -> None:
    lp, old, adv, mask = make(14, spread=0.5)
    _, s = vanilla_ppo_loss(lp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    valid = mask > 0
    log_ratio = (lp - old).detach()
    ratio = log_ratio.exp()
    clipped = (-adv * ratio.clamp(0.8, 1.28) > -adv * ratio) & valid
    assert int(s.tokens) == int(valid.sum())
    torch.testing.assert_close(s.ppo_clip_frac, clipped.sum() / valid.sum())
    torch.testing.assert_close(s.abs_log_ratio_mean, log_ratio[valid].abs().mean())
    torch.testing.assert_close(s.log_ratio_mean, log_ratio[valid].mean())


def test_explicit_knobs_are_validated() -> None:
    lp, old, adv, mask = make(15)
    with pytest.raises(ControlError, match="clip_cov_lb"):
        clip_cov_loss(lp, old, adv, mask, clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ControlError, match="kl_cov_ratio"):
        kl_cov_loss(lp, old, adv, mask, kl_cov_ratio=2.0)
    with pytest.raises(ValueError, match="shape"):
        kl_cov_loss(lp, old, adv[:, :3], mask)
    with pytest.raises(ValueError, match="scope"):
        kl_cov_loss(lp, old, adv, mask, scope="rank")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["vanilla", "clip_cov", "kl_cov"])
def test_bfloat16_inputs(mode: str) -> None:
    lp, old, adv, mask = make(16)
    c = Control(loss_mode=mode, clip_cov_lb=0.1)
    want, _ = policy_loss(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(0))
    lp16 = lp.detach().bfloat16().requires_grad_()
    got, s = policy_loss(
        lp16, old.bfloat16(), adv.bfloat16(), mask, c, generator=torch.Generator().manual_seed(0)
    )
    assert got.dtype == torch.bfloat16 and torch.isfinite(got)
    torch.testing.assert_close(got.float(), want.detach(), rtol=0.05, atol=0.02)
    assert grad_of(got, lp16).dtype == torch.bfloat16
    assert int(s.tokens) == int(mask.sum())


@pytest.mark.parametrize("mode", ["clip_cov", "kl_cov"])
def test_selection_count_is_the_number_picked(mode: str) -> None:
    lp, old, adv, mask = make(21, B=8, T=200)
    c = Control(loss_mode=mode, clip_cov_lb=0.1, clip_cov_ratio=0.02, kl_cov_ratio=0.02)
    sel = select_tokens(lp, old, adv, mask, c, scope="micro_batch")
    assert sel is not None and sel.count is not None
    assert int(sel.count) == int(sel.picked.sum()) > 0
