"""Reproduce the paper's mechanism on a CPU testbed: baseline GRPO vs Clip-Cov vs KL-Cov.

Runs a testbed's trainer (`--testbed toy`: entmon/demo/toy.py, the default; `--testbed lm`: the
pretrained tiny LM of entmon/demo/testbed/) for each method and seed, then prints and writes
(JSON + PNG) what Cui et al. (2025) claim, measured on it:
- the baseline's entropy collapses (entropy at the last step relative to the start);
- Clip-Cov and KL-Cov end with a higher reward than the baseline, by more than the seed spread,
  and keep more entropy over the second half of training;
- the law R = -a exp(H) + b fitted on the baseline (monitor.analysis.fit_law: R^2, predicted
  ceiling b - a against the reward reached; the fit on the first 36 steps scored on the rest);
- how concentrated the per-token covariance is (mean of the top 0.02% over the mean).

No server: each run calls the client's own `policy_loss` under a fixed `Control` and its
`StepAccumulator` (the two things `Monitor.policy_loss` does) through `OfflineMonitor`, so a
run costs what training costs. The demo goes through the real `Monitor` and server.

    python bench/reproduce.py                      # 3 methods x 3 seeds x 300 steps
    python bench/reproduce.py --steps 40 --seeds 0 --out /tmp/r   # a quick look
    python bench/reproduce.py --testbed lm         # the pretrained LM: docs/reproduce-lm.*
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from client import Control, StepAccumulator, policy_loss, token_covariance
from entmon.demo import testbeds
from entmon.demo.toy import ToyConfig
from monitor.analysis import fit_law, track_record
from monitor.api_models import StepPoint

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("vanilla", "clip_cov", "kl_cov")
LABELS = {"vanilla": "GRPO (baseline)", "clip_cov": "Clip-Cov", "kl_cov": "KL-Cov"}
COLORS = {"vanilla": "tab:gray", "clip_cov": "tab:blue", "kl_cov": "tab:orange"}
FINAL_STEPS = 50  # "the reward reached": mean over the last 50 steps
TOP_FRACTION = 2e-4  # the paper's top 0.02%
POOL_STEPS = 25  # steps pooled for the concentration (~51k tokens: the top 0.02% is 10 tokens)
LAW_SMOOTH = 10  # block size of the smoothed law fit (monitor/ANALYSIS.md)
SWITCH = ">"  # in a run name: "vanilla>kl_cov@100" switches to KL-Cov after step 100
SWITCH_WINDOWS = ((0, 10), (20, 30), (45, 55))  # steps after the switch, averaged


def control_for(method: str, testbed: str = testbeds.DEFAULT) -> Control:
    """A testbed's knobs: the paper's except the two ratios, scaled to its mini-batches (see
    entmon/demo/testbeds.py and the README)."""
    bed = testbeds.load(testbed)
    return Control(
        loss_mode=method, clip_cov_ratio=bed.clip_cov_ratio, kl_cov_ratio=bed.kl_cov_ratio
    )


class OfflineMonitor:
    """`Monitor.policy_loss` and `Monitor.log` without a server: the client's loss under a fixed
    control, its step statistics, and each step's per-token covariance kept for pooling."""

    def __init__(self, control: Control, switch: tuple[int, Control] | None = None) -> None:
        self.control = control
        self._switch = switch  # (step, control): applied at the boundary after that step
        self.steps: list[dict[str, Any]] = []
        self.covariances: list[Tensor] = []  # per step, valid tokens only
        self._acc = StepAccumulator()
        self._cov: list[Tensor] = []

    def policy_loss(
        self,
        log_prob: Tensor,
        old_log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        entropy: Tensor | None = None,
        token_ids: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss, stats = policy_loss(log_prob, old_log_prob, advantages, response_mask, self.control)
        self._acc.add(
            log_prob, old_log_prob, advantages, response_mask,
            entropy=entropy, loss=loss, loss_stats=stats, token_ids=token_ids,
        )  # fmt: skip
        cov = token_covariance(log_prob.detach(), advantages, response_mask)  # per mini-batch
        self._cov.append(cov[response_mask.bool()])
        return loss, {}

    def log(self, step: int, **scalars: Any) -> None:
        stats = self._acc.pack().unpack()["stats"]
        stats.update({k: float(v) for k, v in scalars.items()})
        self.steps.append({"step": step, **stats})
        self.covariances.append(torch.cat(self._cov))
        self._acc, self._cov = StepAccumulator(), []
        if self._switch is not None and step + 1 == self._switch[0]:
            self.control = self._switch[1]


def concentration(cov: Tensor, fraction: float = TOP_FRACTION) -> float:
    """Mean covariance of the top `fraction` of tokens (at least one) over the mean."""
    k = max(1, int(fraction * cov.numel()))
    return float(cov.topk(k).values.mean() / cov.mean())


def run_one(job: tuple[str, int, int, dict[str, Any], str]) -> dict[str, Any]:
    method, seed, steps, overrides, testbed = job
    bed = testbeds.load(testbed)
    knobs = {k: v for k, v in overrides.items() if k in Control.__dataclass_fields__}
    cfg = bed.config(
        seed=seed, steps=steps, **{k: v for k, v in overrides.items() if k not in knobs}
    )
    switch = None
    if SWITCH in method:  # "vanilla>kl_cov@100": the demo's dashboard switch, offline
        first, rest = method.split(SWITCH)
        to, at = rest.split("@")
        switch = (int(at), control_for(to, testbed).replace(**knobs))
        method = first
    mon = OfflineMonitor(control_for(method, testbed).replace(**knobs), switch)
    t0 = time.perf_counter()
    records = bed.train(cfg, mon)
    seconds = time.perf_counter() - t0
    pooled = [
        concentration(torch.cat(mon.covariances[i : i + POOL_STEPS]))
        for i in range(0, steps - POOL_STEPS + 1, POOL_STEPS)
    ]
    per_step = [s["cov_top_concentration"] for s in mon.steps if "cov_top_concentration" in s]
    return {
        "method": job[0],
        "seed": seed,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "entropy": [r.entropy for r in records],
        "reward": [r.reward for r in records],
        "expected_reward": [r.extra.get("expected_reward") for r in records],
        "detached": [int(s.get("detached", 0)) for s in mon.steps],
        "penalised": [int(s.get("penalised", 0)) for s in mon.steps],
        "candidates": [int(s.get("candidates", 0)) for s in mon.steps],
        "tokens": [int(s.get("tokens", 0)) for s in mon.steps],
        "concentration_per_step": per_step,
        "concentration_pooled": pooled,
    }


def prior_entropy(cfg: Any, samples: int = 2048) -> dict[str, float]:
    """The LM testbed before RL: token entropy of answers sampled from the pretrained model on
    the RL prompts (the issue's target: median below 0.1 nats, the top 20% of tokens carrying
    at least 80% of the entropy, as in a language model)."""
    from client import token_entropy
    from entmon.demo.testbed.pretrain import load_pretrained
    from entmon.demo.testbed.task import PromptPool, reward

    torch.set_num_threads(1)
    model = load_pretrained(cfg.pretrain, cfg.cache_dir)
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = PromptPool(cfg.pool, cfg.seed)
    prompts = pool.prompts[pool.draw(samples, gen)]
    answers = model.sample(prompts, gen)
    with torch.no_grad():
        h = token_entropy(model.answer_logits(prompts, answers)).flatten()
    ranked = h.sort(descending=True).values
    return {
        "tokens": float(h.numel()),
        "mean": float(h.mean()),
        "median": float(h.median()),
        "top20_share": float(ranked[: h.numel() // 5].sum() / ranked.sum()),
        "reward": float(reward(prompts, answers).mean()),
    }


def summarise_run(run: dict[str, Any]) -> dict[str, float]:
    H, R = run["entropy"], run["reward"]
    n = len(H)
    start = statistics.median(H[:5])
    return {
        "start_entropy": start,
        "final_entropy_rel": H[-1] / start,
        "second_half_entropy": statistics.fmean(H[n // 2 :]),
        "final_reward": settled(run),
        "start_reward": statistics.fmean(R[:5]),
    }


def _points(run: dict[str, Any], key: str = "reward") -> list[StepPoint]:
    """The run's (entropy, reward) steps; key "expected_reward" takes the LM testbed's exact
    expected reward, present every `eval_every` steps (NaN elsewhere: the law skips those steps,
    and the early fit still ends at the 36th step, not the 36th reward)."""
    return [
        StepPoint(step=i, ranks=1, stats={"entropy": h, "reward": math.nan if r is None else r})
        for i, (h, r) in enumerate(zip(run["entropy"], run[key], strict=True))
    ]


def _every(run: dict[str, Any]) -> int:
    steps = [i for i, r in enumerate(run["expected_reward"]) if r is not None]
    return steps[1] - steps[0] if len(steps) > 1 else 1


def has_expected(run: dict[str, Any]) -> bool:
    return any(r is not None for r in run.get("expected_reward", []))


def settled(run: dict[str, Any], key: str = "reward") -> float:
    """The reward the run settles at: the mean over its last FINAL_STEPS steps."""
    tail = [r for r in run[key][-FINAL_STEPS:] if r is not None]
    return statistics.fmean(tail) if tail else math.nan


def law(run: dict[str, Any], smooth: int, key: str = "reward") -> dict[str, Any]:
    fit = fit_law(_points(run, key), smooth=smooth)
    return fit.model_dump(include={"a", "b", "r2", "ceiling", "ceiling_low", "ceiling_high"})


def early_fit(run: dict[str, Any], key: str = "reward") -> dict[str, Any]:
    """The paper's test: the law fitted on the first 36 steps, scored on every later step."""
    record = track_record(_points(run, key))
    return record.model_dump(include={"fit_steps", "ceiling", "predicted", "rmse", "relative_rmse"})


def switch_summary(
    switched: list[dict[str, Any]], baseline: list[dict[str, Any]]
) -> dict[str, Any]:
    """Entropy after a mid-run switch against the same seed's baseline (identical until then)."""
    at = int(switched[0]["method"].split("@")[1])
    base = {r["seed"]: r for r in baseline}
    rows = []
    for r in switched:
        b = base[r["seed"]]
        row: dict[str, Any] = {
            "seed": r["seed"],
            "before": statistics.fmean(r["entropy"][max(0, at - 5) : at]),
        }
        for lo, hi in SWITCH_WINDOWS:
            window = slice(at + lo, at + hi)
            if len(r["entropy"][window]):
                row[f"{lo}-{hi}"] = (
                    statistics.fmean(r["entropy"][window]),
                    statistics.fmean(b["entropy"][window]),
                )
        row["final_reward"] = (summarise_run(r)["final_reward"], summarise_run(b)["final_reward"])
        rows.append(row)
    return {"method": switched[0]["method"], "at": at, "per_seed": rows}


def _switch_step(method: str) -> int:
    return int(method.split("@")[1])


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    out: dict[str, Any] = {"methods": {}}
    for m, rs in by.items():
        s = [summarise_run(r) for r in rs]
        out["methods"][m] = {k: mean_sd([x[k] for x in s]) for k in s[0]} | {
            "seconds_per_run": mean_sd([r["seconds"] for r in rs]),
            "seconds_per_step": mean_sd([r["seconds_per_step"] for r in rs]),
            "final_rewards": [x["final_reward"] for x in s],
            "second_half_entropies": [x["second_half_entropy"] for x in s],
            "selected_per_step": statistics.fmean(
                statistics.fmean(r["detached"] if m == "clip_cov" else r["penalised"]) for r in rs
            ),
            "candidates_per_step": statistics.fmean(statistics.fmean(r["candidates"]) for r in rs),
            "tokens_per_step": statistics.fmean(statistics.fmean(r["tokens"]) for r in rs),
        }
    if "vanilla" in by:
        base = by["vanilla"]
        out["law"] = {
            "per_seed_smooth1": [law(r, 1) for r in base],
            f"per_seed_smooth{LAW_SMOOTH}": [law(r, LAW_SMOOTH) for r in base],
            "reward_reached": [summarise_run(r)["final_reward"] for r in base],
            "early_fit": [early_fit(r) for r in base],
        }
        if all(has_expected(r) for r in base):
            out["law"] |= {
                "per_seed_expected": [law(r, 1, "expected_reward") for r in base],
                "expected_reached": [settled(r, "expected_reward") for r in base],
                "early_fit_expected": [early_fit(r, "expected_reward") for r in base],
            }
    switched = sorted({r["method"] for r in runs if SWITCH in r["method"]}, key=_switch_step)
    if switched and "vanilla" in by:
        out["switch"] = [
            switch_summary([r for r in runs if r["method"] == m], by["vanilla"]) for m in switched
        ]
    all_pooled = [c for r in runs for c in r["concentration_pooled"]]
    all_step = [c for r in runs for c in r["concentration_per_step"] if math.isfinite(c)]
    base_pooled = [c for r in by.get("vanilla", []) for c in r["concentration_pooled"]]
    out["concentration"] = {
        "pooled_steps": POOL_STEPS,
        "pooled_median_all": statistics.median(all_pooled) if all_pooled else None,
        "pooled_median_baseline": statistics.median(base_pooled) if base_pooled else None,
        "pooled_min_baseline": min(base_pooled) if base_pooled else None,
        "per_step_median_all": statistics.median(all_step) if all_step else None,
    }
    return out


def report(
    summary: dict[str, Any], cfg: Any, seeds: list[int], testbed: str = testbeds.DEFAULT
) -> str:
    lines = []
    ms = summary["methods"]
    base = ms.get("vanilla")
    bed = testbeds.load(testbed)
    lines.append(f"{bed.describe(cfg)}, seeds {seeds}, {cfg.steps} steps")
    lines.append(
        f"knobs: clip_cov_ratio {bed.clip_cov_ratio} kl_cov_ratio {bed.kl_cov_ratio} "
        f"({bed.ratio_note}), clip_cov_lb/ub 1/5, ppo_kl_coef 1, clip ratios 0.2/0.2"
    )
    header = (
        f"{'method':16} {'reward start':>12} {'reward end':>15} {'H end/start':>12} "
        f"{'H 2nd half':>15} {'vs base':>7} {'sel/step':>8} {'s/run':>7} {'s/step':>6}"
    )
    lines += [header, "-" * len(header)]
    for m, s in ms.items():
        ratio = s["second_half_entropy"][0] / base["second_half_entropy"][0] if base else math.nan
        lines.append(
            f"{LABELS[m]:16} {s['start_reward'][0]:12.3f} "
            f"{s['final_reward'][0]:8.3f} ±{s['final_reward'][1]:.3f} "
            f"{s['final_entropy_rel'][0]:12.1%} "
            f"{s['second_half_entropy'][0]:8.3f} ±{s['second_half_entropy'][1]:.3f} "
            f"{ratio:6.1f}x {s['selected_per_step']:8.1f} {s['seconds_per_run'][0]:7.0f} "
            f"{s['seconds_per_step'][0]:6.3f}"
        )
    lines.append(f"(± is the sd over seeds; reward end = mean of the last {FINAL_STEPS} steps)")
    if base:
        for m in ("clip_cov", "kl_cov"):
            if m not in ms:
                continue
            gain = ms[m]["final_reward"][0] - base["final_reward"][0]
            spread = max(
                max(xs) - min(xs) for xs in (ms[m]["final_rewards"], base["final_rewards"])
            )
            worst = min(ms[m]["final_rewards"]) - max(base["final_rewards"])
            lines.append(
                f"{LABELS[m]}: reward {gain:+.3f} over baseline (largest seed range "
                f"{spread:.3f}; worst {LABELS[m]} seed minus best baseline seed {worst:+.3f})"
            )
    if "law" in summary:
        lw = summary["law"]
        fits = [
            (key.removeprefix("per_seed_"), lw[key], lw["reward_reached"])
            for key in ("per_seed_smooth1", f"per_seed_smooth{LAW_SMOOTH}")
        ]
        if "per_seed_expected" in lw:
            fits.append(("exact expected reward", lw["per_seed_expected"], lw["expected_reached"]))
        for label, per_seed, reached_by_seed in fits:
            for seed, f, reached in zip(seeds, per_seed, reached_by_seed, strict=True):
                name = f"law on baseline seed {seed} ({label})"
                if f["r2"] is None:
                    lines.append(f"{name}: not enough data")
                    continue
                inside = f["ceiling_low"] <= reached <= f["ceiling_high"]
                lines.append(
                    f"{name}: a {f['a']:.4f} b {f['b']:.4f} R^2 {f['r2']:.3f} "
                    f"ceiling {f['ceiling']:.3f} [{f['ceiling_low']:.3f}, "
                    f"{f['ceiling_high']:.3f}] vs reached {reached:.3f} "
                    f"({'inside' if inside else 'outside'})"
                )
        early = [("", lw["early_fit"])]
        if "early_fit_expected" in lw:
            early.append((" (exact expected reward)", lw["early_fit_expected"]))
        for label, records in early:
            for seed, e in zip(seeds, records, strict=True):
                if e["relative_rmse"] is not None:
                    lines.append(
                        f"law fitted on baseline seed {seed}'s first {e['fit_steps']} steps"
                        f"{label}, predicting the next {e['predicted']}: RMSE {e['rmse']:.4f}, "
                        f"relative {e['relative_rmse']:.1%}, ceiling {e['ceiling']:.3f}"
                    )
    for sw in summary.get("switch", []):
        at, rows = sw["at"], sw["per_seed"]
        to = sw["method"].split(SWITCH)[1].split("@")[0]
        parts = [f"entropy before {statistics.fmean(r['before'] for r in rows):.3f}"]
        for lo, hi in SWITCH_WINDOWS:
            key = f"{lo}-{hi}"
            if all(key in r for r in rows):
                s_h = statistics.fmean(r[key][0] for r in rows)
                b_h = statistics.fmean(r[key][1] for r in rows)
                parts.append(f"steps {at + lo}-{at + hi}: {s_h:.3f} vs baseline {b_h:.3f}")
        s_r = statistics.fmean(r["final_reward"][0] for r in rows)
        b_r = statistics.fmean(r["final_reward"][1] for r in rows)
        parts.append(f"reward end {s_r:.3f} vs baseline {b_r:.3f}")
        lines.append(
            f"switch to {LABELS[to]} after step {at} (the demo's dashboard switch), mean of "
            f"{len(rows)} seeds: " + "; ".join(parts)
        )
    c = summary["concentration"]
    if c["pooled_median_baseline"] is not None:
        lines.append(
            f"covariance concentration (top 0.02% / mean) over {c['pooled_steps']}-step pools "
            f"of {c['pooled_steps'] * cfg.tokens_per_step} tokens: baseline median "
            f"{c['pooled_median_baseline']:.0f}x (min {c['pooled_min_baseline']:.0f}x), all runs "
            f"median {c['pooled_median_all']:.0f}x"
        )
    if c["per_step_median_all"] is not None:
        lines.append(
            f"per step (client statistic cov_top_concentration; the top 0.02% of "
            f"{cfg.tokens_per_step} tokens is 1 token): median {c['per_step_median_all']:.0f}x"
        )
    return "\n".join(lines)


def plot(
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    methods: list[str],
    path: Path,
    reward_label: str = "reward (digits in place / 4)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        for key, ax in (("entropy", axes[0]), ("reward", axes[1])):
            curves = torch.tensor([r[key] for r in rs])  # seeds, steps
            steps = torch.arange(curves.shape[1])
            ax.plot(steps, curves.mean(0), color=COLORS[m], label=LABELS[m])
            if len(rs) > 1:
                lo, hi = curves.min(0).values, curves.max(0).values
                ax.fill_between(steps, lo, hi, color=COLORS[m], alpha=0.2, linewidth=0)
    switched = sorted({r["method"] for r in runs if SWITCH in r["method"]}, key=_switch_step)
    for m, style in zip(switched, ("--", ":", "-."), strict=False):
        rs = [r for r in runs if r["method"] == m]
        to, at = m.split(SWITCH)[1].split("@")
        for key, ax in (("entropy", axes[0]), ("reward", axes[1])):
            mean = torch.tensor([r[key] for r in rs]).mean(0)  # steps
            ax.plot(torch.arange(mean.shape[0]), mean, color=COLORS[to], linestyle=style,
                    linewidth=1.2, label=f"GRPO, {LABELS[to]} after step {at}")  # fmt: skip
    axes[0].set(xlabel="step", ylabel="policy entropy (nats/token)", title="Entropy")
    axes[1].set(xlabel="step", ylabel=reward_label, title="Reward")
    axes[0].legend(loc="lower left", fontsize=8)
    axes[1].legend(loc="upper left", fontsize=8)
    ax = axes[2]
    base = [r for r in runs if r["method"] == "vanilla"]
    law_fits = summary.get("law", {})
    key = "expected_reward" if "per_seed_expected" in law_fits else "reward"
    fits = law_fits.get("per_seed_expected", law_fits.get(f"per_seed_smooth{LAW_SMOOTH}", []))
    fitted = [(r, f) for r, f in zip(base, fits, strict=True) if f["r2"] is not None]
    if fitted:  # a seed with too few steps for a fit is left out
        hs = torch.linspace(0, max(max(r["entropy"]) for r in base), 100)
        shades = [str(0.15 + 0.55 * i / max(1, len(fitted) - 1)) for i in range(len(fitted))]
        for (r, f), shade in zip(fitted, shades, strict=True):
            points = [(h, y) for h, y in zip(r["entropy"], r[key], strict=True) if y is not None]
            ax.scatter(*zip(*points, strict=True), s=4 if key == "reward" else 9, alpha=0.4,
                       color=shade)  # fmt: skip
            ax.plot(hs, -f["a"] * hs.exp() + f["b"], color=shade,
                    label=f"seed {r['seed']}: R = -{f['a']:.3g} exp(H) + {f['b']:.3g}, "
                    f"R² {f['r2']:.2f}, ceiling {f['ceiling']:.2f}")  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    if key == "expected_reward":
        ax.set_ylabel(f"exact expected reward R, every {_every(base[0])} steps")
    else:
        ax.set_ylabel("reward R")
    ax.set(xlabel="policy entropy H", title="Baseline: R = -a exp(H) + b")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounded(value: Any, digits: int = 5) -> Any:
    """Floats to `digits` decimals, for a JSON file a third of the size."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".e") else int(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", choices=testbeds.NAMES, default=testbeds.DEFAULT,
                        help="toy: codes cracked from scratch; lm: a tiny LM pretrained on "
                        "noisy arithmetic traces (entmon/demo/testbeds.py)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=ToyConfig.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs in parallel (each uses one thread)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="directory for reproduce.json and reproduce.png (-lm.json/.png "
                        "for --testbed lm)")  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override a ToyConfig/LMConfig field or a control knob "
                        "(exploration only: the README's figures use the defaults)")  # fmt: skip
    parser.add_argument("--switch-at", type=int, nargs="*", default=[25, 100], metavar="STEP",
                        help="also run the baseline switched to --switch-to after each STEP, as "
                        "the demo's user does in the dashboard (none: no such runs)")  # fmt: skip
    parser.add_argument("--switch-to", choices=METHODS[1:], default="kl_cov")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw reproduce.png from --out's reproduce.json")  # fmt: skip
    args = parser.parse_args(argv)
    bed = testbeds.load(args.testbed)
    stem = "reproduce" if args.testbed == testbeds.DEFAULT else f"reproduce-{args.testbed}"
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    if args.replot:
        saved: dict[str, Any] = json.loads(json_path.read_text())
        methods = [m for m in METHODS if m in saved["summary"]["methods"]]
        plot(saved["runs"], saved["summary"], methods, png_path, bed.reward_label)
        return saved
    overrides = {k: _number(v) for k, v in (item.split("=", 1) for item in args.set)}
    names = list(args.methods)
    if "vanilla" in args.methods:
        names += [f"vanilla{SWITCH}{args.switch_to}@{at}" for at in args.switch_at
                  if 0 < at < args.steps]  # fmt: skip
    jobs = [(m, s, args.steps, overrides, args.testbed) for m in names for s in args.seeds]
    cfg = bed.config(steps=args.steps, **{k: v for k, v in overrides.items()
                                          if k not in Control.__dataclass_fields__})  # fmt: skip
    t0 = time.perf_counter()
    bed.prepare(cfg)  # once, before parallel runs would each pretrain the same model
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs) as pool:
            runs = []
            for run in pool.imap_unordered(run_one, jobs):
                runs.append(run)
                print(f"  {run['method']:8} seed {run['seed']}: {run['seconds']:.0f} s", flush=True)
    else:
        runs = [run_one(j) for j in jobs]
    runs.sort(key=lambda r: (names.index(r["method"]), r["seed"]))
    summary = summarise(runs, args.methods)
    text = report(summary, cfg, args.seeds, args.testbed)
    if args.testbed == "lm":
        summary["prior"] = prior = prior_entropy(cfg)
        text += (
            f"\npretrained model before RL ({prior['tokens']:.0f} answer tokens sampled on the "
            f"RL prompts): token entropy median {prior['median']:.4f} nats, mean "
            f"{prior['mean']:.4f}, top 20% of tokens carry {prior['top20_share']:.1%}; reward "
            f"{prior['reward']:.3f}"
        )
    if overrides:
        text += f"\noverrides: {overrides}"
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s with {args.jobs} parallel runs")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "testbed": args.testbed,
        "config": json.loads(json.dumps(asdict(cfg), default=str)) | {"seeds": args.seeds},
        "knobs": {m: control_for(m, args.testbed).knobs() for m in args.methods},
        "overrides": overrides,
        "summary": summary,
        "report": text,
        "runs": runs,
    }
    json_path.write_text(json.dumps(_rounded(result)))
    plot(runs, summary, args.methods, png_path, bed.reward_label)
    print(f"wrote {json_path} and {png_path}")
    return result


if __name__ == "__main__":
    main()
