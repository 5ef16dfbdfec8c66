"""The entropy thermostat against its anchors on a CPU testbed (issue #21).

Each method trains a testbed (entmon/demo/testbeds.py: `--testbed toy`, entmon/demo/toy.py, the
default; `--testbed lm`, the pretrained tiny LM of entmon/demo/testbed/) offline (no server, as
bench/reproduce.py does) and,
for the controllers, decides once per step on that step's entropy; a decision computed after
step k is applied from step k + 2 on (the service round trip: the client learns the new control
from the ingest response of step k + 1 and applies it at the next boundary), and a controller
that respects "no stacking" (ours) decides only on steps that ran the latest version.

Methods (all on plain GRPO's loss unless said):
- vanilla: plain GRPO.
- fixed: the best fixed Clip-Cov / KL-Cov setting of the testbed's reproduction
  (docs/reproduce.json, docs/reproduce-lm.json: highest mean reward over the last 50 steps).
- skywork: Skywork-OR1's adaptive entropy control on the entropy bonus: c <- clip(c + delta if
  H < target else c - delta, 0, c_max), delta 1e-4, c_max 5e-3, c starting at 0.
- entropic: EntroPIC's PI law alpha = clip(Kp e + Ki sum e, -1, 1) (e = target - H in nats,
  Kp 1, Ki 0.01). Its own lever (re-weighting positive and negative samples) is not an entmon
  knob, so alpha drives the same actuator as ours: entropy_coeff = alpha * ENTROPIC_SCALE
  (negative alpha: an entropy penalty, the sign-symmetric counterpart of its lever).
- thermostat: monitor/thermostat/law.py on entropy_coeff.
The entropy bonus goes through client/entropy_bonus.py: neither testbed's entropy carries a
gradient, so it is the score-function surrogate.

Targets: "schedule" (default, linear from 0.8 to 0.1 x start entropy over the run) and
"constant" (0.8 x start, set before the collapse, judged from step 50 on).

    python bench/thermostat.py                       # 5 methods x 3 seeds x 300 steps, 2 targets
    python bench/thermostat.py --steps 60 --seeds 0 --methods thermostat --jobs 1
    python bench/thermostat.py --testbed lm --from-reproduction --methods vanilla fixed \
        thermostat --targets schedule             # the LM: docs/thermostat-lm.json and .png
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
from bench.reproduce import control_for
from client import Control, policy_loss, token_covariance
from client.entropy_bonus import entropy_bonus
from entmon.demo import testbeds
from entmon.demo.toy import ToyConfig
from monitor.analysis.collapse import collapse
from monitor.api_models import StepPoint
from monitor.thermostat import Settings, State, StepInput, Target, decide

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("vanilla", "fixed", "skywork", "entropic", "thermostat", "thermostat_ff")
TARGETED = ("skywork", "entropic", "thermostat", "thermostat_ff")  # run once per target mode
TARGETS = ("schedule", "constant")
LABELS = {
    "vanilla": "GRPO (baseline)",
    "fixed": "best fixed",
    "skywork": "Skywork-OR1",
    "entropic": "EntroPIC",
    "thermostat": "thermostat (ours)",
    "thermostat_ff": "ours + cov feed-forward",
}
COLORS = {"vanilla": "tab:gray", "fixed": "tab:blue", "skywork": "tab:green",
          "entropic": "tab:purple", "thermostat": "tab:red",
          "thermostat_ff": "tab:orange"}  # fmt: skip
DELAY = 2  # a decision on step k runs from step k + 2
FINAL_STEPS = 50
LAST_STEPS = 150
CONSTANT_FROM = 50
SCHEDULE = (0.8, 0.1)  # fraction of the start entropy at step 0 and at SCHEDULE_STEPS
SCHEDULE_STEPS = 300  # the schedule's length (held flat after it), whatever --steps is
CONSTANT = 0.8
SKYWORK_DELTA, SKYWORK_MAX = 1e-4, 5e-3
ENTROPIC_KP, ENTROPIC_KI = 1.0, 0.01
ENTROPIC_SCALE = 1.0  # |alpha| = 1 is the thermostat's upper bound on entropy_coeff
FEEDFORWARD = 1.0  # thermostat_ff: the law with covariance feed-forward at this gain
HYSTERESIS = 0.05  # sign changes counted beyond +-5% of the target too


def target_for(mode: str, steps: int) -> Target:
    if mode == "schedule":
        return Target.schedule([(0, SCHEDULE[0]), (SCHEDULE_STEPS - 1, SCHEDULE[1])],
                               of_start=True)  # fmt: skip
    return Target.fraction(CONSTANT)


def thermostat_settings(target: Target, **overrides: Any) -> Settings:
    return Settings(target=target, knob="entropy_coeff", **overrides)


class Controller:
    """A law that maps (step, entropy, knob, ...) to a new knob value or None."""

    respects_versions = False  # decides only on steps that ran the latest version

    target: Target
    start: list[float]

    def __call__(self, step: StepInput) -> float | None:
        raise NotImplementedError

    def target_at(self, step: StepInput) -> float:
        """The anchors' target in nats, relative to the median of the first 5 entropies."""
        if len(self.start) < 5:
            self.start.append(step.entropy)
        t = self.target.at(step.step, statistics.median(self.start))
        assert t is not None
        return t


class Skywork(Controller):
    def __init__(self, target: Target) -> None:
        self.target, self.c = target, 0.0
        self.start: list[float] = []

    def __call__(self, step: StepInput) -> float | None:
        t = self.target_at(step)
        delta = SKYWORK_DELTA if step.entropy < t else -SKYWORK_DELTA
        self.c = min(max(self.c + delta, 0.0), SKYWORK_MAX)
        return self.c


class EntroPIC(Controller):
    def __init__(self, target: Target) -> None:
        self.target, self.integral = target, 0.0
        self.start: list[float] = []

    def __call__(self, step: StepInput) -> float | None:
        t = self.target_at(step)
        e = t - step.entropy
        self.integral += e
        alpha = max(-1.0, min(1.0, ENTROPIC_KP * e + ENTROPIC_KI * self.integral))
        return alpha * ENTROPIC_SCALE


class Thermostat(Controller):
    respects_versions = True

    def __init__(self, settings: Settings) -> None:
        self.settings, self.state = settings, State()
        self.reasons: list[str] = []

    def __call__(self, step: StepInput) -> float | None:
        d = decide(self.settings, self.state, step)
        self.state = d.state
        if d.value is not None:
            self.reasons.append(f"step {step.step}: {d.reason}")
        return d.value


class BenchMonitor:
    """The toy's two Monitor calls, offline: the client's loss under a control plus the entropy
    bonus, and a controller whose decisions reach the loss DELAY steps later."""

    def __init__(self, control: Control, controller: Controller | None) -> None:
        self.control = control
        self.coeff = 0.0
        self.controller = controller
        self.version = 0  # of the coefficient the current step runs
        self.latest = 0  # latest version written
        self.pending: list[tuple[int, int, float]] = []  # (first step, version, value)
        self.steps: list[dict[str, float]] = []
        self._ent = self._cov = self._tokens = 0.0

    def policy_loss(
        self,
        log_prob: Tensor,
        old_log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        entropy: Tensor | None = None,
        token_ids: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss, _ = policy_loss(log_prob, old_log_prob, advantages, response_mask, self.control)
        assert entropy is not None
        if self.coeff:
            loss = loss + entropy_bonus(self.coeff, entropy, response_mask, log_prob)
        valid = response_mask.bool()
        cov = token_covariance(log_prob.detach(), advantages, response_mask)
        self._ent += float(entropy[valid].sum())
        self._cov += float(cov[valid].sum())
        self._tokens += float(valid.sum())
        return loss, {}

    def log(self, step: int, **scalars: Any) -> None:
        H = self._ent / self._tokens
        row = {"step": step, "entropy": H, "cov_mean": self._cov / self._tokens,
               "coeff": self.coeff, "version": self.version} | {
            k: float(v) for k, v in scalars.items()}  # fmt: skip
        self.steps.append(row)
        row["exploding"] = float(exploding_at(self.steps))
        self._ent = self._cov = self._tokens = 0.0
        if self.controller is not None:
            ran_latest = self.version == self.latest
            if ran_latest or not self.controller.respects_versions:
                value = self.controller(StepInput(
                    step=step, entropy=H, knob_value=self._latest_value(), ran_latest=ran_latest,
                    exploding=bool(row["exploding"]), cov_mean=row["cov_mean"],
                ))  # fmt: skip
                if value is not None and value != self._latest_value():
                    self.latest += 1
                    self.pending.append((step + DELAY, self.latest, value))
        for _first, version, value in [p for p in self.pending if p[0] == step + 1]:
            self.coeff, self.version = value, version
        self.pending = [p for p in self.pending if p[0] > step + 1]

    def _latest_value(self) -> float:
        return self.pending[-1][2] if self.pending else self.coeff


def exploding_at(rows: list[dict[str, float]]) -> bool:
    """monitor.analysis's state of the run up to now is `exploding`."""
    # collapse() reads the start (first 5 steps), the trend (last 50) and the latest step
    picked = rows if len(rows) <= 55 else rows[:5] + rows[-50:]
    points = [StepPoint(step=int(r["step"]), ranks=1, stats={"entropy": r["entropy"]})
              for r in picked]  # fmt: skip
    return collapse(points).state == "exploding"


def stem(testbed: str) -> str:
    """File names' stem in docs/: the toy's keep theirs, another testbed's carry its name."""
    return "" if testbed == testbeds.DEFAULT else f"-{testbed}"


def reproduction_path(testbed: str) -> Path:
    return ROOT / "docs" / f"reproduce{stem(testbed)}.json"


def best_fixed(testbed: str = testbeds.DEFAULT) -> str:
    """The testbed's reproduction's fixed method with the highest mean final reward."""
    path = reproduction_path(testbed)
    try:
        methods = json.loads(path.read_text())["summary"]["methods"]
        fixed = {str(m): s["final_reward"][0] for m, s in methods.items() if m != "vanilla"}
        return max(fixed, key=lambda m: float(fixed[m]))
    except (OSError, KeyError, ValueError):
        return "clip_cov"


Job = tuple[str, str, int, int, dict[str, Any], str, dict[str, Any]]
"""(method, target mode, seed, steps, thermostat overrides, testbed, testbed config overrides)"""


def run_one(job: Job) -> dict[str, Any]:
    method, mode, seed, steps, law_overrides, testbed, cfg_overrides = job
    torch.set_num_threads(1)
    bed = testbeds.load(testbed)
    target = target_for(mode, steps)
    controller: Controller | None = None
    control = control_for("vanilla", testbed)
    if method == "fixed":
        control = control_for(best_fixed(testbed), testbed)
    elif method == "skywork":
        controller = Skywork(target)
    elif method == "entropic":
        controller = EntroPIC(target)
    elif method == "thermostat":
        controller = Thermostat(thermostat_settings(target, **law_overrides))
    elif method == "thermostat_ff":
        settings = thermostat_settings(target, **({"feedforward": FEEDFORWARD} | law_overrides))
        controller = Thermostat(settings)
    mon = BenchMonitor(control, controller)
    t0 = time.perf_counter()
    records = bed.train(bed.config(seed=seed, steps=steps, **cfg_overrides), mon)
    return {
        "method": method,
        "target_mode": mode,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "entropy": [r.entropy for r in records],
        "reward": [r.reward for r in records],
        "coeff": [s["coeff"] for s in mon.steps],
        "cov_mean": [s["cov_mean"] for s in mon.steps],
        "exploding": [bool(s["exploding"]) for s in mon.steps],
        "changes": mon.latest,
        "reasons": controller.reasons[-20:] if isinstance(controller, Thermostat) else [],
    }


def from_reproduction(
    seeds: list[int], steps: int, testbed: str = testbeds.DEFAULT,
    cfg_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """vanilla and the best fixed method's runs from the testbed's reproduction, in this file's
    form. Refuses (SystemExit naming the difference) unless the reproduction trained the same
    config, knobs and seeds for at least `steps` steps: only then are they the same runs."""
    path = reproduction_path(testbed)
    saved = json.loads(path.read_text())
    _check_same_training(saved, path, seeds, steps, testbed, cfg_overrides or {})
    fixed = best_fixed(testbed)
    out = []
    for r in saved["runs"]:
        if r["method"] not in ("vanilla", fixed) or r["seed"] not in seeds:
            continue
        H = r["entropy"][:steps]
        rows = [{"step": float(k), "entropy": h} for k, h in enumerate(H)]
        out.append({
            "method": "vanilla" if r["method"] == "vanilla" else "fixed",
            "target_mode": "none", "seed": r["seed"], "seconds": r["seconds"],
            "entropy": H, "reward": r["reward"][:steps], "coeff": [0.0] * len(H),
            "cov_mean": [], "changes": 0, "reasons": [], "from": f"docs/{path.name}",
            "exploding": [exploding_at(rows[: k + 1]) for k in range(len(H))],
        })  # fmt: skip
    return out


def _check_same_training(
    saved: dict[str, Any], path: Path, seeds: list[int], steps: int, testbed: str,
    cfg_overrides: dict[str, Any],
) -> None:  # fmt: skip
    bed = testbeds.load(testbed)
    problems = []
    if saved.get("testbed", testbeds.DEFAULT) != testbed:
        problems.append(f"testbed {saved.get('testbed')!r}, not {testbed!r}")
    if saved.get("overrides"):
        problems.append(f"overrides {saved['overrides']}")
    have = saved.get("config", {})
    if have.get("steps", 0) < steps:
        problems.append(f"{have.get('steps')} steps, fewer than {steps}")
    missing = sorted(set(seeds) - {r["seed"] for r in saved["runs"]})
    if missing:
        problems.append(f"no runs of seeds {missing}")
    ours = json.loads(json.dumps(asdict(bed.config(**cfg_overrides)), default=str))
    for key, value in ours.items():
        if key not in ("seed", "steps") and key in have and have[key] != value:
            problems.append(f"config {key} {have[key]!r}, not {value!r}")
    for method, knobs in saved.get("knobs", {}).items():  # knobs added since default to off
        now = control_for(method, testbed).knobs()
        problems += [f"{method}'s {k} {v!r}, not {now.get(k)!r}" for k, v in knobs.items()
                     if now.get(k) != v]  # fmt: skip
    if problems:
        raise SystemExit(f"--from-reproduction: {path} is not this training: "
                         + "; ".join(problems))  # fmt: skip


def metrics(run: dict[str, Any], mode: str) -> dict[str, Any]:
    """Tracking figures of one run against the target `mode` (see the module docstring)."""
    H, R = run["entropy"], run["reward"]
    n = len(H)
    start = statistics.median(H[:5])
    target = target_for(mode, n)
    T = [target.at(k, start) or math.nan for k in range(n)]
    rel = [(h - t) / t for h, t in zip(H, T, strict=True)]
    reached = next((k for k in range(n) if H[k] <= T[k]), None)
    if mode == "constant":
        judged_from = CONSTANT_FROM if reached is None else min(reached, CONSTANT_FROM)
        judged_from = CONSTANT_FROM
    else:
        judged_from = reached if reached is not None else n
    after = rel[judged_from:]
    last = rel[-min(LAST_STEPS, n) :]
    return {
        "reached_at": reached,
        "judged_from": judged_from,
        "track": statistics.median(abs(x) for x in after) if after else None,
        "track_last150": statistics.median(abs(x) for x in last),
        "overshoot_below": max((-x for x in after), default=None),
        "overshoot_above": max((x for x in after), default=None),
        "sign_changes": _sign_changes(after, 0.0),
        "sign_changes_5pct": _sign_changes(after, HYSTERESIS),
        "exploding_steps": sum(run["exploding"]),
        "reward_last50": statistics.fmean(R[-min(FINAL_STEPS, n) :]),
    }


def _sign_changes(rel: list[float], band: float) -> int:
    """Sign changes of the error; with a band, only crossings from beyond -band to beyond
    +band (or back) count, so noise inside the band is not chatter."""
    changes, side = 0, 0
    for x in rel:
        s = 1 if x > band else -1 if x < -band else 0
        if s and side and s != side:
            changes += 1
        if s:
            side = s
    return changes


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in TARGETS:
        rows: dict[str, Any] = {}
        for m in METHODS:
            rs = [r for r in runs if r["method"] == m and r["target_mode"] in (mode, "none")]
            if not rs:
                continue
            per_seed = {r["seed"]: metrics(r, mode) for r in rs}
            rows[m] = {"per_seed": per_seed}
        if rows:
            out[mode] = rows
    return out


def goals(summary: dict[str, Any]) -> list[str]:
    """The issue's goals, each with MET / NOT MET and the numbers."""
    lines: list[str] = []
    sched = summary.get("schedule", {})
    ours = sched.get("thermostat", {}).get("per_seed", {})
    if not ours:
        return lines
    tracks = {s: m["track"] for s, m in ours.items()}
    ok = all(t is not None and t <= 0.05 for t in tracks.values())
    lines.append(f"{'MET' if ok else 'NOT MET'}: median tracking error <= 5% on every seed: "
                 + ", ".join(f"seed {s} {_pct(t)}" for s, t in tracks.items()))  # fmt: skip
    for anchor in ("skywork", "entropic"):
        theirs = sched.get(anchor, {}).get("per_seed", {})
        if theirs:
            pairs = [(tracks[s], theirs[s]["track"]) for s in tracks if s in theirs]
            ok = all(a is not None and (b is None or a < b) for a, b in pairs)
            lines.append(f"{'MET' if ok else 'NOT MET'}: tracking error below {LABELS[anchor]}'s "
                         "on every seed: " + ", ".join(f"{_pct(a)} vs {_pct(b)}"
                                                       for a, b in pairs))  # fmt: skip
    changes = [m["sign_changes"] for m in ours.values()]
    ok = max(changes) <= 16
    lines.append(f"{'MET' if ok else 'NOT MET'}: at most a third of the rough run's 48-68 sign "
                 f"changes (<= 16): {changes} (beyond +-{HYSTERESIS:.0%}: "
                 f"{[m['sign_changes_5pct'] for m in ours.values()]})")  # fmt: skip
    expl = [m["exploding_steps"] for m in ours.values()]
    lines.append(f"{'MET' if not any(expl) else 'NOT MET'}: no step exploding: {expl}")
    fixed = sched.get("fixed", {}).get("per_seed", {})
    if fixed:
        bar = statistics.fmean(m["reward_last50"] for m in fixed.values())
        rewards = [m["reward_last50"] for m in ours.values()]
        ok = all(r > bar for r in rewards)
        lines.append(f"{'MET' if ok else 'NOT MET'}: reward over the last 50 steps above the best "
                     f"fixed method's mean {bar:.3f} on every seed: "
                     + ", ".join(f"{r:.3f}" for r in rewards))  # fmt: skip
    const = summary.get("constant", {}).get("thermostat", {}).get("per_seed", {})
    if const:
        tr = [m["track"] for m in const.values()]
        ok = all(t is not None and t <= 0.05 for t in tr)
        lines.append(f"{'MET' if ok else 'NOT MET'}: constant target {CONSTANT} x start held from "
                     f"step {CONSTANT_FROM} (median error <= 5%): "
                     + ", ".join(_pct(t) for t in tr))  # fmt: skip
    return lines


def _pct(x: float | None) -> str:
    return "n/a (never reached)" if x is None else f"{x:.1%}"


def report(summary: dict[str, Any]) -> str:
    lines = []
    for mode, rows in summary.items():
        desc = (f"schedule {SCHEDULE[0]} -> {SCHEDULE[1]} x start, judged after first reached"
                if mode == "schedule" else
                f"constant {CONSTANT} x start, judged from step {CONSTANT_FROM}")  # fmt: skip
        lines.append(f"target: {desc}")
        head = (
            f"{'method':24} {'seed':>4} {'reach':>5} {'track':>7} {'last150':>7} {'over-':>6} "
            f"{'over+':>6} {'signs':>5} {'>5%':>4} {'expl':>4} {'R last50':>8}"
        )
        lines += [head, "-" * len(head)]
        for m, row in rows.items():
            for seed, x in row["per_seed"].items():
                lines.append(
                    f"{LABELS[m]:24} {seed:>4} {_reach(x['reached_at']):>5} "
                    f"{_short(x['track']):>7} {_short(x['track_last150']):>7} "
                    f"{_short(x['overshoot_below']):>6} {_short(x['overshoot_above']):>6} "
                    f"{x['sign_changes']:>5} {x['sign_changes_5pct']:>4} "
                    f"{x['exploding_steps']:>4} {x['reward_last50']:8.3f}"
                )  # fmt: skip
        lines.append("")
    lines.append("track: median |H - target| / target after the target is first reached "
                 "(constant: from step 50); last150: the same over the last 150 steps; over-/+: "
                 "largest relative error below/above the target after that; signs: sign changes "
                 "of the error (>5%: only those from beyond -5% to beyond +5%); expl: steps "
                 "`exploding`")  # fmt: skip
    lines += goals(summary)
    return "\n".join(lines)


def _reach(step: int | None) -> str:
    return "-" if step is None else str(step)


def _short(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a row per target some controller tracked (all of them when none did)
    modes = [t for t in TARGETS if any(r["target_mode"] == t for r in runs)] or list(TARGETS)
    fig, axes = plt.subplots(len(modes), 3, figsize=(16, 4 * len(modes)), squeeze=False)
    for row, mode in enumerate(modes):
        ax_h, ax_r, ax_c = axes[row]
        for m in METHODS:
            rs = [r for r in runs if r["method"] == m and r["target_mode"] in (mode, "none")]
            for i, r in enumerate(rs):
                label = LABELS[m] if i == 0 else None
                ax_h.plot(r["entropy"], color=COLORS[m], lw=0.9, alpha=0.8, label=label)
                ax_r.plot(_smooth(r["reward"], 10), color=COLORS[m], lw=0.9, alpha=0.8,
                          label=label)  # fmt: skip
                if m in TARGETED:
                    ax_c.plot(r["coeff"], color=COLORS[m], lw=0.9, alpha=0.8, label=label)
        some = next((r for r in runs if r["target_mode"] in (mode, "none")), None)
        if some is not None:
            n = len(some["entropy"])
            start = statistics.median(some["entropy"][:5])
            t = target_for(mode, n)
            ax_h.plot([t.at(k, start) for k in range(n)], color="black", ls="--", lw=1.2,
                      label=f"target (seed {some['seed']}'s start)")  # fmt: skip
        ax_h.set(title=f"entropy, {mode} target", xlabel="step", ylabel="nats/token")
        ax_r.set(title="reward (10-step mean)", xlabel="step")
        ax_c.set(title="entropy_coeff applied", xlabel="step", yscale="symlog")
        ax_c.set_yscale("symlog", linthresh=1e-4)
        for ax in (ax_h, ax_r, ax_c):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _smooth(xs: list[float], k: int) -> list[float]:
    return [statistics.fmean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def _number(text: str) -> float | int:
    return float(text) if any(c in text for c in ".e") else int(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", choices=testbeds.NAMES, default=testbeds.DEFAULT,
                        help="toy: codes cracked from scratch; lm: a tiny LM pretrained on "
                        "noisy arithmetic traces (entmon/demo/testbeds.py); writes "
                        "thermostat.json/.png, thermostat-lm.json/.png for lm")  # fmt: skip
    parser.add_argument("--config", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override a ToyConfig/LMConfig field (tests)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=ToyConfig.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override a thermostat setting (exploration only)")  # fmt: skip
    parser.add_argument("--replot", action="store_true")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], metavar="JSON",
                        help="also take the runs of these thermostat.json files (those not run "
                        "now): a benchmark assembled from runs made separately")  # fmt: skip
    parser.add_argument("--from-reproduction", action="store_true",
                        help="take vanilla and fixed from the testbed's reproduction "
                        "(docs/reproduce.json, docs/reproduce-lm.json; checked to be the same "
                        "config, knobs, seeds and steps; no bonus: the same training) instead "
                        "of running")  # fmt: skip
    args = parser.parse_args(argv)
    json_path = args.out / f"thermostat{stem(args.testbed)}.json"
    png_path = json_path.with_suffix(".png")
    if args.replot:
        saved: dict[str, Any] = json.loads(json_path.read_text())
        plot(saved["runs"], png_path)
        return saved
    overrides = {k: _number(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg_overrides = {k: _number(v) for k, v in (item.split("=", 1) for item in args.config)}
    bed = testbeds.load(args.testbed)
    cfg = bed.config(steps=args.steps, **cfg_overrides)
    merged: list[dict[str, Any]] = []  # runs made earlier (--merge): not run again
    for path in args.merge:
        text = path.read_text()
        merged += ([json.loads(line) for line in text.splitlines() if line.strip()]
                   if path.suffix == ".jsonl" else json.loads(text)["runs"])  # fmt: skip
    have = {(r["method"], r["target_mode"], r["seed"]) for r in merged}
    jobs = []
    for m in args.methods:
        if args.from_reproduction and m in ("vanilla", "fixed"):
            continue
        modes = args.targets if m in TARGETED else ["none"]
        jobs += [(m, mode, s, args.steps, overrides, args.testbed, cfg_overrides)
                 for mode in modes for s in args.seeds if (m, mode, s) not in have]  # fmt: skip
    reused = []  # checked before any run starts
    if args.from_reproduction:
        reused = from_reproduction(args.seeds, args.steps, args.testbed, cfg_overrides)
    t0 = time.perf_counter()
    if jobs:
        bed.prepare(cfg)  # once, before parallel runs would each pretrain the same model
    args.out.mkdir(parents=True, exist_ok=True)
    partial = json_path.with_name(f"{json_path.stem}-runs.jsonl")  # each run as it ends (--merge)
    partial.write_text("")
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = []
            for run in pool.imap_unordered(run_one, jobs):
                runs.append(run)
                with partial.open("a") as f:
                    f.write(json.dumps(_rounded(run)) + "\n")
                print(f"  {run['method']:10} {run['target_mode']:8} seed {run['seed']}: "
                      f"{run['seconds']:.0f} s", flush=True)  # fmt: skip
    else:
        runs = [run_one(j) for j in jobs]
    runs += [r for r in reused if r["method"] in args.methods]
    runs += [r for r in merged if r["method"] in args.methods]
    runs.sort(key=lambda r: (METHODS.index(r["method"]), r["target_mode"], r["seed"]))
    summary = summarise(runs)
    text = f"{bed.describe(cfg)}; best fixed: {best_fixed(args.testbed)}\n\n" + report(summary)
    if overrides:
        text += f"\noverrides: {overrides}"
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s with {args.jobs} parallel runs")
    result = {
        "testbed": args.testbed,
        "config": {
            "testbed": bed.describe(cfg),
            "testbed_config": json.loads(json.dumps(asdict(cfg), default=str)),
            "steps": args.steps,
            "seeds": args.seeds,
            "delay": DELAY,
            "schedule": SCHEDULE,
            "constant": CONSTANT,
            "fixed": best_fixed(args.testbed),
            "thermostat": thermostat_settings(
                target_for("schedule", args.steps), **overrides
            ).to_dict(),
        },
        "summary": summary,
        "report": text,
        "runs": runs,
    }
    json_path.write_text(json.dumps(_rounded(result)))
    plot(runs, png_path)
    print(f"wrote {json_path} and {png_path}")
    return result


def _rounded(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {str(k): _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


if __name__ == "__main__":
    main()
