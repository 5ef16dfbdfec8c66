"""Randomised parity with verl 0.9.1's own loss functions (`pip install "entmon[verl]"`).

Shapes from one token up, masks of every kind (right padding, holes, all-masked rows and
batches, column-major), ties, junk (NaN, +-inf, huge) in the padding, four dtypes and every
`loss_agg_mode`. Valid entries are small dyadic numbers: every sum of them is exact in float32
in any order, so verl's means and entmon's are the same bits whatever the summation order and
each comparison below can be exact. Per-token losses go through verl's own `agg_loss`, as the
verl plugin does (client/integrations/verl.py).

- KL-Cov, vanilla: loss and gradient bit for bit; KL-Cov's penalised tokens are compared where a
  penalty shows (log-ratio not 0).
- Clip-Cov: the candidate set (verl with a budget covering them all detaches exactly them) and
  the detached count exactly; given verl's own draw, loss and gradient bit for bit. The draw's
  distribution: tests/client/test_losses_verl.py::test_clip_cov_same_selection_distribution.
- float64 / bfloat16 / float16 inputs: the covariance is float32 (client/covariance.py:
  COVARIANCE_DTYPE), so KL-Cov's selection, and for float64 Clip-Cov's candidates, are verl's on
  the float32 values; the loss and gradient are verl's on the inputs themselves given the same
  tokens (for KL-Cov: when verl's ranking in the dtype picked the same tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from verl.trainer.ppo import core_algos

from client.control import Control
from client.losses import policy_token_losses
from client.selection import Selection
from tests.client.test_losses_verl import verl_config

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
JUNK = (math.nan, -math.inf, math.inf, 1e30, -1e30)
LOG_PROBS = (0.0, -0.125, -0.5, -1.0, -2.0, -3.5)  # 0.0 often: confident tokens tie
ADVANTAGES = (1.0, -1.0, 0.5, 0.0, -2.0)
SHIFTS = (0.0, 0.0, 0.25, -0.25, 0.75, -1.5)  # old = log_prob + shift
# Few examples (each calls verl several times): well under a minute on a loaded 2-core machine.
# No shrinking: with verl in the loop it takes minutes; the failing example is small anyway.
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    phases=[Phase.explicit, Phase.generate],
)


@dataclass
class Case:
    mode: str
    agg: str
    dtype: torch.dtype
    lp: torch.Tensor  # float32 values, B x T, maybe column-major
    old: torch.Tensor
    adv: torch.Tensor
    mask: torch.Tensor
    control: Control

    def __repr__(self) -> str:  # what a failure prints
        rows = {k: getattr(self, k).tolist() for k in ("lp", "old", "adv", "mask")}
        layout = "row-major" if self.lp.is_contiguous() else "column-major"
        return f"Case({self.mode}, {self.agg}, {self.dtype}, {layout}, {self.control}, {rows})"

    def as_dtype(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 24))
    column_major = draw(st.booleans())

    def table(values: tuple[float, ...], shape: tuple[int, int]) -> torch.Tensor:
        flat = draw(st.lists(st.sampled_from(values), min_size=shape[0] * shape[1],
                             max_size=shape[0] * shape[1]))  # fmt: skip
        return torch.tensor(flat, dtype=torch.float32).view(shape)

    lp = table(LOG_PROBS, (B, T))
    old = lp + table(SHIFTS, (B, T))
    per_row = draw(st.booleans())  # GRPO: one advantage per completion
    adv = table(ADVANTAGES, (B, 1)).expand(B, T).clone() if per_row else table(ADVANTAGES, (B, T))
    kind = draw(st.sampled_from(["right", "holes", "all", "none"]))
    if kind == "right":
        lengths = torch.tensor(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
        mask = (torch.arange(T) < lengths.unsqueeze(1)).float()
    elif kind == "holes":
        mask = table((0.0, 1.0, 1.0), (B, T))
    elif kind == "all":
        mask = torch.ones(B, T)
    else:
        mask = torch.zeros(B, T)
    if draw(st.booleans()):  # junk where masked
        for t in (lp, old, adv):
            junk = table(JUNK, (B, T))
            t.copy_(torch.where(mask > 0, t, junk))
    if draw(st.booleans()):
        mask = mask.bool()
    if column_major:  # same values, transposed storage
        lp, old, adv, mask = (t.t().contiguous().t() for t in (lp, old, adv, mask))
    mode = draw(st.sampled_from(["vanilla", "clip_cov", "kl_cov"]))
    ratio = draw(st.sampled_from([0.02, 0.1, 0.3, 1.0]))
    lb, ub = draw(st.sampled_from([(-1.0, 1.0), (0.0, 0.5), (0.1, 5.0), (-4.0, 0.0)]))
    control = Control(
        loss_mode=mode, clip_cov_ratio=ratio, clip_cov_lb=lb, clip_cov_ub=ub,
        kl_cov_ratio=ratio, ppo_kl_coef=draw(st.sampled_from([1.0, 0.5])),
        clip_ratio_low=0.2, clip_ratio_high=draw(st.sampled_from([0.2, 0.28])),
    )  # fmt: skip
    dtypes = [torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16]
    dtype = draw(st.sampled_from(dtypes))
    return Case(mode, draw(st.sampled_from(AGG_MODES)), dtype, lp, old, adv, mask, control)


def verl_run(
    case: Case, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, control: Control
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """verl's loss, d loss / d log_prob, d / d advantages and d / d old_log_prob, metrics."""
    leaves = [t.detach().clone().requires_grad_() for t in (lp, adv, old)]
    fn = getattr(core_algos, f"compute_policy_loss_{control.loss_mode}")
    loss, metrics = fn(
        leaves[2], leaves[0], leaves[1], case.mask, loss_agg_mode=case.agg,
        config=verl_config(control),
    )  # fmt: skip
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    g = [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads, strict=True)]
    return loss.detach(), g[0], g[1], g[2], metrics


def ours_run(
    case: Case,
    lp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    selection: Selection | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    leaf = lp.detach().clone().requires_grad_()
    per_token, stats = policy_token_losses(
        leaf, old, adv, case.mask, case.control, selection=selection,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    config = verl_config(case.control)
    loss = core_algos.agg_loss(
        loss_mat=per_token, loss_mask=case.mask, loss_agg_mode=case.agg,
        **config.global_batch_info,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return loss.detach(), torch.zeros_like(leaf) if grad is None else grad, stats


def same(a: torch.Tensor, b: torch.Tensor, *, summed: bool, case: Case) -> None:
    """Bit for bit, but for a sum over a column-major batch: verl's per-token losses keep the
    inputs' layout and are summed in that order, entmon's are row-major (last bits)."""
    exact = not summed or case.lp.is_contiguous()
    tol = 0.0 if exact else {torch.float64: 1e-15, torch.float32: 1e-6}.get(case.dtype, 1e-2)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


def valid(case: Case) -> torch.Tensor:
    return case.mask > 0


def junk_reaches_verl(case: Case) -> bool:
    """verl's seq-mean modes sum loss * mask per row: non-finite junk in the padding of a row
    with a valid token can make their loss NaN, where entmon's per-token losses are 0 at masked
    tokens (a documented difference; a fully masked row is left out by verl too)."""
    ok = valid(case)
    padding = ~ok & ok.any(-1, keepdim=True)
    junk = any(not torch.isfinite(t[padding]).all() for t in (case.lp, case.old, case.adv))
    return junk and case.agg.startswith("seq-mean")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kl_cov_penalised(case: Case, *inputs: torch.Tensor) -> torch.Tensor:
    """The tokens verl's KL-Cov penalises, where a penalty shows (log-ratio not 0): there
    d loss / d old_log_prob moves by the penalty's sign(lp - old) when ppo_kl_coef changes."""
    *_, d_old, _ = verl_run(case, *inputs, case.control)
    *_, d_old_off, _ = verl_run(case, *inputs, case.control.replace(ppo_kl_coef=0.0))
    lp, old = inputs[0], inputs[1]
    return valid(case) & (lp != old) & (d_old != d_old_off)


@PROPERTY
@given(case=cases())
def test_loss_gradient_and_selection_equal_verls(case: Case) -> None:
    note(repr(case))
    ok = valid(case)
    n = int(ok.sum())
    inputs = tuple(case.as_dtype(t) for t in (case.lp, case.old, case.adv))  # lp, old, adv
    # entmon selects on float32 covariances whatever the dtype (COVARIANCE_DTYPE): its selection
    # is verl's on the float32 values; its loss is verl's on the same inputs, given the tokens.
    values32 = (case.lp, case.old, case.adv)
    if case.mode == "clip_cov":
        # verl's candidate set: with a budget covering every token it detaches exactly them,
        # the valid tokens where d loss / d advantage is 0 (ratio > 0 everywhere else).
        # (Half precision: the PPO clip, which also rules candidates out, is decided on the
        # dtype's ratio by both; only the covariance is float32: no one verl run to compare.)
        sel = _selection_of(case, *inputs)
        _, _, stats = ours_run(case, *inputs)
        if case.dtype in (torch.float32, torch.float64):
            everything = case.control.replace(clip_cov_ratio=1.0)
            *_, v_dadv, _, _ = verl_run(case, *values32, everything)
            assert torch.equal(sel.candidates, ok & (v_dadv == 0))
        torch.manual_seed(7)
        *_, v_dadv, _, metrics = verl_run(case, *values32, case.control)
        if n and case.dtype in (torch.float32, torch.float64):  # the draw: in distribution
            assert int(stats.detached) == int((ok & (v_dadv == 0)).sum())
            assert metrics["actor/pg_clipfrac"] == pytest.approx(int(stats.detached) / n)
        # Given verl's own draw (on these inputs), entmon's loss and gradient are verl's.
        torch.manual_seed(7)
        v_loss, v_grad, v_dadv, _, _ = verl_run(case, *inputs, case.control)
        given_sel = Selection(ok & (v_dadv == 0), sel.candidates, sel.budget)
        o_loss, o_grad, _ = ours_run(case, *inputs, selection=given_sel)
    elif case.mode == "kl_cov":
        sel = _selection_of(case, *inputs)
        shows = ok & (case.lp != case.old)
        assert torch.equal(sel.picked & shows, kl_cov_penalised(case, *values32))
        o_loss, o_grad, stats = ours_run(case, *inputs)
        if n:
            assert int(stats.penalised) == max(int(case.control.kl_cov_ratio * n), 1)
        v_loss, v_grad, *_ = verl_run(case, *inputs, case.control)
        if case.dtype != torch.float32 and not torch.equal(
            sel.picked & shows, kl_cov_penalised(case, *inputs)
        ):
            return  # verl ranked the dtype's covariances: another selection, another loss
    else:
        o_loss, o_grad, _ = ours_run(case, *inputs)
        v_loss, v_grad, *_ = verl_run(case, *inputs, case.control)
    if junk_reaches_verl(case) and torch.isnan(v_loss):
        assert torch.isfinite(o_loss)
    else:
        same(o_loss, v_loss, summed=True, case=case)
    same(o_grad[ok], v_grad[ok], summed=False, case=case)
    assert (o_grad[~ok] == 0).all()  # junk never reaches entmon's gradient


def _selection_of(case: Case, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> Selection:
    from client.losses import select_tokens

    sel = select_tokens(
        lp, old, adv, case.mask, case.control, generator=torch.Generator().manual_seed(0),
        scope="micro_batch",
    )  # fmt: skip
    assert sel is not None
    return sel
