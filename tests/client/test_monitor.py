"""`Monitor.policy_loss` + `log`: a step's micro-batches become one report, with histograms and
top tokens, on a real server; the loss uses the step's control; nothing is read on the host."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import httpx
import pytest
import torch

from client import DRIVER_RANK, Monitor
from client.losses import policy_loss
from tests.client.conftest import FAST, Decoder, micro_batch, stored_steps
from tests.conftest import ServerProcess


def test_the_micro_batches_of_a_step_become_one_report_with_histograms_and_top_tokens(
    shared_server: ServerProcess,
) -> None:
    url = shared_server.url
    batches = [micro_batch(0), micro_batch(1)]
    with Monitor(run="mb", url=url, config=FAST, tokenizer=Decoder()) as mon:
        for mb in batches:
            loss, info = mon.policy_loss(**mb)
            assert loss.dim() == 0
            assert all(isinstance(v, torch.Tensor) for v in info.values())
        mon.log(0, reward=0.25, lr=1e-6)
    (step,) = stored_steps(url, "mb")
    mask = torch.cat([mb["response_mask"] for mb in batches])  # 2B, T
    entropy = torch.cat([mb["entropy"] for mb in batches])
    assert step["stats"]["tokens"] == int(mask.sum())
    assert step["stats"]["entropy"] == pytest.approx(float((entropy * mask).sum() / mask.sum()))
    assert step["stats"]["reward"] == 0.25 and step["user"]["lr"] == 1e-6
    hist = httpx.get(f"{url}/v1/runs/mb/histograms", params={"name": "entropy"}).json()
    assert sum(hist["steps"][0]["counts"]) == int(mask.sum())
    top = httpx.get(f"{url}/v1/runs/mb/top_tokens").json()["tokens"]
    assert top and all(t["text"] == f"<{t['token_id']}>" for t in top)
    covs = [t["cov"] for t in top]
    assert covs == sorted(covs, reverse=True)
    # each in context: the stored neighbours are the ones around it in its response
    rows = torch.cat([mb["token_ids"] for mb in batches])
    t = next(t for t in top if t.get("context_before"))
    (row,) = [r for r in range(len(rows)) if int(rows[r, t["position"]]) == t["token_id"]][:1]
    left = rows[row, max(t["position"] - 4, 0) : t["position"]].tolist()
    assert t["context_before"] == Decoder().decode(left)


def test_the_loss_is_the_one_the_current_control_names() -> None:
    mb = micro_batch(2)
    inputs = {k: v for k, v in mb.items() if k not in ("entropy", "token_ids")}
    with Monitor(run="offline", url="http://127.0.0.1:9", config=FAST) as mon:
        loss, info = mon.policy_loss(**inputs)
        expected, _ = policy_loss(**inputs, control=mon.control)
    assert torch.equal(loss, expected)
    assert info["penalised"].item() == 0 and mon.control.loss_mode == "vanilla"


def test_entropy_coeff_adds_the_bonus_directly_when_the_entropy_has_a_gradient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mb = micro_batch(3)
    inputs = {k: v for k, v in mb.items() if k not in ("entropy", "token_ids")}
    entropy = mb["entropy"].clone().requires_grad_()
    with Monitor(run="offline", url="http://127.0.0.1:9", config=FAST) as mon:
        mon.control = replace(mon.control, entropy_coeff=0.1)
        loss, _ = mon.policy_loss(**inputs, entropy=entropy)
        vanilla, _ = policy_loss(**inputs, control=mon.control)
    mask = inputs["response_mask"]
    torch.testing.assert_close(loss, vanilla - 0.1 * (entropy * mask).sum() / mask.sum())
    (grad,) = torch.autograd.grad(loss, entropy)
    torch.testing.assert_close(grad, -0.1 * mask / mask.sum())
    assert "score-function" not in caplog.text


def test_entropy_coeff_without_an_entropy_gradient_uses_the_estimate_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mb = micro_batch(4)
    log_prob = mb["log_prob"].clone().requires_grad_()
    inputs = {"old_log_prob": mb["old_log_prob"], "advantages": mb["advantages"],
              "response_mask": mb["response_mask"]}  # fmt: skip
    with (
        caplog.at_level(logging.WARNING),
        Monitor(run="offline", url="http://127.0.0.1:9", config=FAST) as mon,
    ):
        off, _ = mon.policy_loss(log_prob, **inputs, entropy=mb["entropy"])
        (grad_off,) = torch.autograd.grad(off, log_prob)
        mon.control = replace(mon.control, entropy_coeff=0.1)
        for entropy in (mb["entropy"], None, mb["entropy"]):
            on, _ = mon.policy_loss(log_prob, **inputs, entropy=entropy)
        (grad_on,) = torch.autograd.grad(on, log_prob)
    assert not torch.allclose(grad_on, grad_off)  # the bonus pushes the log-probs
    assert caplog.text.count("score-function estimate on log_prob") == 1


def test_an_entropy_bonus_that_cannot_be_formed_is_logged_and_the_loss_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mb = micro_batch(5)
    inputs = {k: v for k, v in mb.items() if k != "token_ids"}  # nothing has a gradient
    with Monitor(run="offline", url="http://127.0.0.1:9", config=FAST) as mon:
        mon.control = replace(mon.control, entropy_coeff=0.1)
        loss, _ = mon.policy_loss(**inputs)
        vanilla, _ = policy_loss(**{k: v for k, v in inputs.items() if k != "entropy"},
                                 control=mon.control)  # fmt: skip
    torch.testing.assert_close(loss, vanilla)
    assert "entropy bonus not applied: entropy carries no gradient" in caplog.text


def test_an_aggregate_makes_the_loss_and_the_statistic_stays_the_token_mean(
    shared_server: ServerProcess,
) -> None:
    mb = micro_batch(4)
    inputs = {k: v for k, v in mb.items() if k not in ("entropy", "token_ids")}
    seen: list[torch.Tensor] = []

    def token_sum(per_token: torch.Tensor) -> torch.Tensor:
        seen.append(per_token)
        return per_token.sum()

    with Monitor(run="aggregate", url=shared_server.url, config=FAST) as mon:
        loss, _ = mon.policy_loss(**inputs, aggregate=token_sum)
        mean, _ = policy_loss(**inputs, control=mon.control)
        mon.log(0)
    (per_token,) = seen
    assert per_token.shape == inputs["log_prob"].shape
    tokens = inputs["response_mask"].sum()
    torch.testing.assert_close(loss, mean * tokens)
    (step,) = stored_steps(shared_server.url, "aggregate")
    assert step["stats"]["policy_loss"] == pytest.approx(float(mean), rel=1e-6)


def test_a_step_without_policy_loss_reports_only_its_scalars(shared_server: ServerProcess) -> None:
    with Monitor(run="scalars", url=shared_server.url, config=FAST) as mon:
        mon.policy_loss(**micro_batch(3))
        mon.log(0, reward=1.0)
        mon.log(1, entropy=0.5, reward=2.0)  # no micro-batch this step: nothing carried over
    first, second = stored_steps(shared_server.url, "scalars")
    assert "tokens" in first["stats"]
    assert second["stats"] == {"entropy": 0.5, "reward": 2.0}


def test_a_scalar_that_is_not_a_number_is_left_out_with_an_error_the_step_stays(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="client"):
        mon = Monitor(run="bad-scalar", url=shared_server.url, config=FAST)
        mon.log(0, entropy=1.0, note="diverged?", vector=torch.ones(3), lr=1e-3)
        mon.close()
    (step,) = stored_steps(shared_server.url, "bad-scalar")
    assert step["stats"] == {"entropy": 1.0} and step["user"] == {"lr": 1e-3}
    (record,) = caplog.records
    assert "note=" in record.getMessage() and "vector=" in record.getMessage()


def test_a_run_name_the_service_would_refuse_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        Monitor(run="my run/1", url="http://127.0.0.1:9")


def test_a_driver_applies_no_control_and_counts_as_no_rank(shared_server: ServerProcess) -> None:
    url, run = shared_server.url, "driver-monitor"
    r = httpx.put(
        f"{url}/v1/runs/{run}/control",
        json={"loss_mode": "kl_cov", "reason": "test"},
        headers={"If-Match": '"0"'},
    )
    assert r.status_code == 200
    with Monitor(run, url=url, rank=DRIVER_RANK, config=FAST) as mon:
        for step in (1, 2, 3):
            mon.log(step, entropy=1.0 / step, reward=0.5)
            deadline = time.monotonic() + 30
            while len(stored_steps(url, run)) < step:  # the reporter sends in order: step 1's
                assert time.monotonic() < deadline  # answer (control 1) was read before step 2
                time.sleep(0.02)
        assert mon.control.version == 0  # a rank would have switched at step 3's boundary
    steps = stored_steps(url, run)
    assert [(s["step"], s["ranks"], s["driver"]) for s in steps] == [
        (s, 0, True) for s in (1, 2, 3)
    ]
    assert [s["stats"]["entropy"] for s in steps] == [1.0, 0.5, 1.0 / 3]
