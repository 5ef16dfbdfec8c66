from __future__ import annotations

import pytest

from monitor.analysis import FLAGS, HealthFlag, health
from monitor.api_models import Control, StepPoint
from tests.monitor.synthetic_runs import point

N = 10  # health_steps


def steps(n: int, first: int = 0, version: int | None = None, **stats: float) -> list[StepPoint]:
    return [point(t, control_version=version, **stats) for t in range(first, first + n)]


def flag(run: list[StepPoint], control: Control, name: str) -> HealthFlag:
    (found,) = [f for f in health(run, control, steps=N).flags if f.flag == name]
    return found


CLIP = Control(loss_mode="clip_cov")  # lb 1, ub 5, ratio 2e-4
KL = Control(loss_mode="kl_cov")  # ratio 2e-3
HEALTHY_CLIP = dict(tokens=20_000, candidates=40, detached=4, cov_max=30.0)
HEALTHY_KL = dict(tokens=20_000, penalised=40, penalised_abs_log_ratio_mean=0.03)

# (flag, control, a run built to raise it, a near miss built not to)
CASES = [
    (
        "clip_cov_no_candidates",
        CLIP,
        steps(30, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0, "cov_max": 0.4}),
        [
            *steps(29, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0}),
            point(29, **{**HEALTHY_CLIP, "candidates": 1, "detached": 1}),
        ],
    ),
    (
        "kl_cov_on_policy",
        KL,
        steps(30, **{**HEALTHY_KL, "penalised_abs_log_ratio_mean": 0.0}),
        steps(30, **{**HEALTHY_KL, "penalised_abs_log_ratio_mean": 0.012}),
    ),
    (
        "budget_floor_inflation",
        KL,
        steps(30, **{**HEALTHY_KL, "tokens": 400, "penalised": 4}),  # 1 per 100-token unit: 5x
        steps(30, **{**HEALTHY_KL, "tokens": 400, "penalised": 1}),  # 1.25x: the ratio rules
    ),
    (
        "budget_floor_inflation",
        CLIP,
        steps(30, **{**HEALTHY_CLIP, "tokens": 1000, "detached": 2}),  # 2e-3 vs 2e-4
        steps(30, **HEALTHY_CLIP),
    ),
]


@pytest.mark.parametrize(("name", "control", "bad", "good"), CASES)
def test_flag_raised_by_its_run_and_not_by_the_near_miss(
    name: str, control: Control, bad: list[StepPoint], good: list[StepPoint]
) -> None:
    raised = flag(bad, control, name)
    assert raised.applicable and raised.active and raised.hint and raised.steps == N
    assert [f.flag for f in health(bad, control, steps=N).flags if f.active] == [name]
    quiet = flag(good, control, name)
    assert quiet.applicable and not quiet.active and quiet.hint is None
    assert not any(f.active for f in health(good, control, steps=N).flags)


def test_healthy_interventions_raise_nothing() -> None:
    for run, control in ((steps(30, **HEALTHY_CLIP), CLIP), (steps(30, **HEALTHY_KL), KL)):
        assert not any(f.active for f in health(run, control, steps=N).flags)


def test_vanilla_runs_make_every_flag_not_applicable() -> None:
    run = steps(30, tokens=100, candidates=0, penalised=1, penalised_abs_log_ratio_mean=0.0)
    result = health(run, Control(), steps=N)
    assert [f.flag for f in result.flags] == list(FLAGS)
    assert not any(f.applicable or f.active for f in result.flags)
    assert "current control" in result.note


@pytest.mark.parametrize(
    ("cov_max", "hint"),
    [
        (0.4, "lower clip_cov_lb: no token's covariance exceeded 1.0 (the largest"),
        (80.0, "lower clip_cov_lb or raise clip_cov_ub: covariances reach 80"),
        (3.0, "all PPO-clipped"),
    ],
)
def test_no_candidates_hint_follows_where_the_covariance_is(cov_max: float, hint: str) -> None:
    run = steps(N, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0, "cov_max": cov_max})
    result = flag(run, CLIP, "clip_cov_no_candidates")
    assert result.active and result.hint is not None and hint in result.hint


def test_on_policy_hint_says_use_several_updates() -> None:
    run = steps(N, **{**HEALTHY_KL, "penalised_abs_log_ratio_mean": 1e-5})
    result = flag(run, KL, "kl_cov_on_policy")
    assert result.active and "use several updates per rollout" in (result.hint or "")


def test_on_policy_falls_back_to_the_overall_log_ratio() -> None:
    run = steps(N, tokens=20_000, penalised=40, abs_log_ratio_mean=0.0)
    assert flag(run, KL, "kl_cov_on_policy").active
    run = steps(N, tokens=20_000, penalised=40, abs_log_ratio_mean=0.05)
    assert not flag(run, KL, "kl_cov_on_policy").active


def test_ratio_zero_with_selected_tokens_is_inflated() -> None:
    control = Control(loss_mode="kl_cov", kl_cov_ratio=0.0)
    result = flag(steps(N, **HEALTHY_KL), control, "budget_floor_inflation")
    assert result.active and "larger micro-batches" in (result.hint or "")


def test_a_flag_needs_n_steps() -> None:
    run = steps(N - 1, **{**HEALTHY_KL, "penalised_abs_log_ratio_mean": 0.0})
    result = flag(run, KL, "kl_cov_on_policy")
    assert result.applicable and not result.active and result.rule.startswith("not enough data")


def test_steps_under_an_older_control_version_are_left_out() -> None:
    control = Control(loss_mode="clip_cov", version=3)
    old = steps(30, version=2, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0})
    assert not flag(old, control, "clip_cov_no_candidates").active
    new = steps(N, first=30, version=3, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0})
    assert flag(old + new, control, "clip_cov_no_candidates").active
    unversioned = steps(N, first=30, **{**HEALTHY_CLIP, "candidates": 0, "detached": 0})
    assert flag(old + unversioned, control, "clip_cov_no_candidates").active


def test_nonfinite_statistics_do_not_count_as_evidence() -> None:
    run = steps(N, **{**HEALTHY_KL, "penalised_abs_log_ratio_mean": float("nan")})
    result = flag(run, KL, "kl_cov_on_policy")
    assert not result.active and result.rule.startswith("not enough data")
