"""Selection scope: "global" selects the same tokens however the batch is split."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from client.control import Control
from client.losses import policy_loss, select_tokens

CONTROLS = {
    "kl_cov": Control(loss_mode="kl_cov", kl_cov_ratio=2e-3),
    "clip_cov": Control(loss_mode="clip_cov", clip_cov_ratio=5e-3, clip_cov_lb=0.2),
}
B, T = 8, 400


def make_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous() * 2
    mask = (torch.arange(T) < torch.randint(T // 4, T + 1, (B, 1), generator=g)).float()
    return lp, old, adv, mask


@pytest.mark.parametrize("mode", sorted(CONTROLS))
def test_one_or_four_micro_batches_select_the_same_tokens(mode: str) -> None:
    lp, old, adv, mask = make_batch()
    c = CONTROLS[mode]
    g = torch.Generator().manual_seed(5)
    sel = select_tokens(lp, old, adv, mask, c, generator=g, scope="global")
    assert sel is not None and int(sel.picked.sum()) > 0
    whole, whole_stats = policy_loss(lp, old, adv, mask, c, selection=sel)
    picked_parts, counted, weighted = [], 0, torch.zeros(())
    for rows in torch.arange(B).split(B // 4):
        part = sel.rows(rows)
        loss, s = policy_loss(lp[rows], old[rows], adv[rows], mask[rows], c, selection=part)
        picked_parts.append(part.picked)
        counted += int(s.detached) + int(s.penalised)
        weighted += loss.detach() * s.tokens
    assert torch.equal(torch.cat(picked_parts), sel.picked)
    assert counted == int(whole_stats.detached) + int(whole_stats.penalised)
    assert sum(int(sel.rows(r).budget) for r in torch.arange(B).split(B // 4)) == counted
    # Token-mean micro-batch losses weighted by tokens recover the whole-batch loss.
    torch.testing.assert_close(weighted / whole_stats.tokens, whole.detach())


def test_micro_batch_scope_depends_on_the_split() -> None:
    """The reference behaviour (verl issue #7829) that "global" scope removes."""
    lp, old, adv, mask = make_batch()
    c = CONTROLS["kl_cov"]
    _, whole = policy_loss(lp, old, adv, mask, c)
    per_part = [
        policy_loss(lp[r], old[r], adv[r], mask[r], c)[1] for r in torch.arange(B).split(B // 4)
    ]
    assert sum(int(s.penalised) for s in per_part) != int(whole.penalised)


def test_global_scope_without_a_process_group_is_the_local_selection() -> None:
    lp, old, adv, mask = make_batch(1)
    for c in CONTROLS.values():
        a = select_tokens(lp, old, adv, mask, c, generator=torch.Generator().manual_seed(2))
        b = select_tokens(
            lp, old, adv, mask, c, generator=torch.Generator().manual_seed(2), scope="micro_batch"
        )
        assert a is not None and b is not None and torch.equal(a.picked, b.picked)


def _rank_main(rank: int, world: int, rows: list[int], rdv: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        lp, old, adv, mask = make_batch()
        mine = torch.tensor(rows)
        result = {}
        for mode, c in CONTROLS.items():
            g = torch.Generator().manual_seed(11)  # the same seed on every rank
            sel = select_tokens(
                lp[mine], old[mine], adv[mine], mask[mine], c, generator=g, scope="global"
            )
            assert sel is not None
            result[mode] = sel.picked
        torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _run_group(tmp: Path, name: str, split: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    ctx = mp.get_context("spawn")
    rdv = tmp / f"{name}.rdv"
    outs = [tmp / f"{name}.{r}.pt" for r in range(len(split))]
    procs = [
        ctx.Process(target=_rank_main, args=(r, len(split), rows, str(rdv), str(outs[r])))
        for r, rows in enumerate(split)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"rank process failed with exit code {p.exitcode}"
    return [torch.load(o) for o in outs]


def test_two_ranks_select_what_one_rank_selects(tmp_path: Path) -> None:
    (single,) = _run_group(tmp_path, "one", [list(range(B))])
    for name, split in (
        ("even", [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ("uneven", [[0, 1, 2], [3, 4, 5, 6, 7]]),
    ):
        ranks = _run_group(tmp_path, name, split)
        for mode in CONTROLS:
            assert int(single[mode].sum()) > 0
            assert torch.equal(torch.cat([r[mode] for r in ranks]), single[mode]), (name, mode)
