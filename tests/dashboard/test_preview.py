"""The knob preview: what a setting would have touched on the latest step."""

from __future__ import annotations

from dashboard.preview import candidates_between, preview

UPPER = [-1.0, 0.0, 1.0, 2.0, 5.0]  # buckets: <=-1, (-1,0], (0,1], (1,2], (2,5], >5
COUNTS = [1, 10, 100, 20, 7, 3]
KNOBS = {"loss_mode": "clip_cov", "clip_cov_ratio": 0.01, "clip_cov_lb": 1.0,
         "clip_cov_ub": 5.0, "kl_cov_ratio": 0.002}  # fmt: skip


def test_candidates_are_bracketed_by_the_buckets_inside_and_overlapping_the_bounds() -> None:
    assert candidates_between(COUNTS, UPPER, 1.0, 5.0) == (20, 27)  # (1,2] surely; (2,5] may
    assert candidates_between(COUNTS, UPPER, 0.5, 1.5) == (0, 120)
    assert candidates_between(COUNTS, UPPER, -10.0, 10.0) == (137, 141)


def test_preview_counts_the_budget_and_the_candidates_of_the_latest_step() -> None:
    latest = {"step": 7, "stats": {"tokens": 1410}}
    hist = {"upper_bounds": UPPER, "steps": [{"step": 7, "counts": COUNTS}]}
    p = preview(KNOBS, latest, hist)
    assert p is not None and p.candidates == (20, 27) and p.detached == (14.1, 14.1)
    assert "found 20 to 27 Clip-Cov candidates and detached 14" in p.sentence("clip_cov")
    assert "penalised about 3 tokens" in p.sentence("kl_cov")
    assert "no token" in p.sentence("vanilla")
    stale = {"upper_bounds": UPPER, "steps": [{"step": 6, "counts": COUNTS}]}
    assert preview(KNOBS, latest, stale).candidates is None  # type: ignore[union-attr]
    assert preview(KNOBS, {"step": 0, "stats": {}}, hist) is None
