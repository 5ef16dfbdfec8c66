"""verl's driver: each global step's entropy, reward and response length, which verl's policy
loss never sees, reported by verl's trainer process as the step's driver report.

verl 0.9.1's trainer process (the one that runs `fit`: verl's TaskRunner Ray actor) computes on
the whole rollout batch of every global step, and logs with `Tracking.log(data, step)`:

    actor/entropy         token entropy of the responses under the policy that sampled them
                          (verl's old-log-prob pass always computes it), aggregated with
                          actor.loss_agg_mode: with token-mean (verl's default) entmon's H
    critic/score/mean     mean sequence score: the reward function's, before any KL-in-reward
    response_length/mean  mean response length, tokens

Importing this module changes nothing; `install()` (client.integrations.verl calls it, so in
every verl process at `import verl`) wraps three methods of `verl.utils.tracking.Tracking`,
once: `__init__` starts a `Monitor(run, rank=DRIVER_RANK)` when the config the trainer hands
it selects loss_mode=entmon, `log` gives it those three values for verl's step (a queue append:
never blocking, never raising), and `finish` (verl's TaskRunner calls it when training ends or
fails; Tracking.__del__ too) closes it. The service counts the driver in no rank and lays its
values over the actor ranks' report of the same step (monitor/merge.py).

Why this way, of what verl 0.9.1 offers:
- The loss cannot: verl's `ppo_loss` passes the policy loss neither the entropy (it has one only
  with an entropy bonus, at the cost of a full-vocabulary pass in every update) nor any reward.
  Getting them there means patching verl's worker internals, for numbers the driver already has.
- Tracking has no hook for another backend (a closed list, checked by an assert), so a narrow
  wrap it is. `Tracking(project_name, experiment_name, default_backend, config)`, `log(data,
  step)` and `finish()` are what every verl trainer calls (V0 `ray_trainer`, V1 `trainer_base`,
  the experimental ones), with verl's global step, and the metric names are verl's public
  logging contract; the wrap checks the version (SUPPORTED_VERL) and those signatures, and
  otherwise leaves Tracking alone and says so.
- verl's "file" backend and a process following its file would need `file` in trainer.logger
  and a second process to start and stop, to read the same numbers back from disk.

The driver reports verl's global step as is. The actor ranks count theirs
(ENTMON_VERL_FIRST_STEP, ENTMON_VERL_UPDATES_PER_STEP), so the driver checks both against verl's
config and warns once when the two sides would not number the same steps alike.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from packaging.version import Version

from client.errors import EntmonError
from client.integrations.verl_env import (
    DEFAULT_FIRST_STEP,
    DEFAULT_UPDATES_PER_STEP,
    FIRST_STEP_ENV,
    LOSS_MODE,
    RUN_ENV,
    UPDATES_PER_STEP_ENV,
    parse_int,
)
from client.log_once import LogOnce
from client.monitor import TOKEN_ENV, URL_ENV, Monitor
from client.spool import SPOOL_DIR_ENV
from entmon.wire.ids import DRIVER_RANK

try:
    import verl
    from verl.utils.tracking import Tracking
except ImportError as e:  # pragma: no cover - the extra is installed in development
    raise ImportError(
        'client.integrations.verl_driver needs verl: pip install "entmon[verl]"'
    ) from e

__all__ = ["METRICS", "SUPPORTED_VERL", "VerlDriver", "install"]

SUPPORTED_VERL = (Version("0.9.1"), Version("0.10"))  # [low, high): pyproject's `verl` extra
METRICS = {  # verl's metric -> entmon's statistic
    "actor/entropy": "entropy",
    "critic/score/mean": "reward",
    "response_length/mean": "response_length",
}
# actor/entropy is a mean of token entropies, in nats, under these; a sum under the others.
MEAN_AGG_MODES = ("token-mean", "seq-mean-token-mean")
# The signatures the wrap relies on (parameter names, self first).
_SIGNATURES = {
    "__init__": ("self", "project_name", "experiment_name", "default_backend", "config"),
    "log": ("self", "data", "step", "backend"),
    "finish": ("self", "exit_code"),
}
_WRAPPED = "__entmon_wrapped__"  # on Tracking, once wrapped
_DRIVER = "_entmon_driver"  # on a Tracking instance: its VerlDriver, or None
_log_once = LogOnce(enabled=True)  # the driver is one process: say it there


class VerlDriver:
    """The entmon Monitor of verl's trainer process: reports the METRICS of each global step."""

    def __init__(
        self,
        monitor: Monitor,
        *,
        entropy: bool = True,
        first_step: int = DEFAULT_FIRST_STEP,
        critic_warmup: int = 0,
    ) -> None:
        self.monitor = monitor
        self._names = {k: v for k, v in METRICS.items() if entropy or v != "entropy"}
        self._first_step = first_step  # the actor ranks', checked at the first report
        self._critic_warmup = critic_warmup
        self._checked = False

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] = os.environ) -> VerlDriver | None:
        """The driver for a trainer's config (the dict verl gives Tracking), or None when the
        config does not select loss_mode=entmon or no run is named. Settings come from the
        environment, else from the Ray job's env_vars in the config (what the workers get)."""
        actor = _get(config, "actor_rollout_ref", "actor")
        if _get(actor, "policy_loss", "loss_mode") != LOSS_MODE:
            return None
        job_env = _get(config, "ray_kwargs", "ray_init", "runtime_env", "env_vars")

        def setting(name: str) -> str | None:
            value = environ.get(name) or _get(job_env, name)
            return None if value is None or value == "" else str(value)

        run = setting(RUN_ENV)
        if run is None:
            _log_once(
                "verl_driver_run",
                f"loss_mode={LOSS_MODE}: {RUN_ENV} is not set in verl's trainer process, so the "
                "run gets no entropy or reward: set it through "
                f"+ray_kwargs.ray_init.runtime_env.env_vars.{RUN_ENV}",
            )
            return None
        agg = _get(actor, "loss_agg_mode") or "token-mean"
        entropy = agg in MEAN_AGG_MODES
        if not entropy:
            _log_once(
                "verl_driver_agg",
                f"actor.loss_agg_mode={agg}: verl's actor/entropy is then a sum, not a mean "
                "entropy, so the run gets no entropy (reward and response length still come)",
            )
        _check_updates_per_step(config, setting(UPDATES_PER_STEP_ENV))
        first_step = _int_setting(FIRST_STEP_ENV, setting(FIRST_STEP_ENV), DEFAULT_FIRST_STEP, 0)
        monitor = Monitor(
            run,
            url=setting(URL_ENV),
            token=setting(TOKEN_ENV),
            rank=DRIVER_RANK,
            world_size=1,
            spool_dir=setting(SPOOL_DIR_ENV),
            sync_control=False,
        )
        warmup = _get(config, "trainer", "critic_warmup")
        return cls(
            monitor,
            entropy=entropy,
            first_step=first_step if first_step is not None else DEFAULT_FIRST_STEP,
            critic_warmup=warmup if isinstance(warmup, int) else 0,
        )

    def log(self, data: Mapping[str, Any], step: int) -> None:
        """Report step `step`'s values among `data` (verl's metrics of that step); nothing when
        it has none (a validation-only log). Never blocks, never raises."""
        try:
            scalars = {ours: data[theirs] for theirs, ours in self._names.items() if theirs in data}
            if not scalars:
                return
            if not self._checked:
                self._checked = True
                self._check_first_step(int(step))
            self.monitor.log(step, **scalars)
        except Exception as e:  # verl's training loop is not ours to stop
            _log_once("verl_driver_log", f"driver step {step!r} not reported: {e!r}")

    def close(self) -> None:
        """Send what is queued (for at most the Monitor's close timeout) and stop its thread."""
        try:
            self.monitor.close()
        except Exception as e:  # called from verl's finish and Tracking.__del__
            _log_once("verl_driver_close", f"driver not closed cleanly: {e!r}")

    def _check_first_step(self, step: int) -> None:
        """The actor ranks' first step is verl's first step with an actor update."""
        first_update = max(step, self._critic_warmup + 1)
        if self._first_step != first_update:
            _log_once(
                "verl_driver_first_step",
                f"verl's first actor update is in global step {first_update} (first step "
                f"{step}, critic_warmup={self._critic_warmup}) but the actor ranks number it "
                f"{FIRST_STEP_ENV}={self._first_step}: their loss statistics land "
                f"{self._first_step - first_update:+d} steps off this entropy and reward; set "
                f"{FIRST_STEP_ENV}={first_update}",
            )


def _get(tree: Any, *path: str) -> Any:
    """tree[path[0]][path[1]]... or None (dicts, and OmegaConf's DictConfig, are Mappings)."""
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _int_setting(name: str, raw: str | None, default: int, minimum: int) -> int | None:
    try:
        return parse_int(name, raw, default, minimum)
    except EntmonError as e:  # the actor ranks refuse it: they say so
        _log_once(f"verl_driver_{name}", f"not checked: {e}")
        return None


def _check_updates_per_step(config: Any, raw: str | None) -> None:
    """The actor ranks close a step every ENTMON_VERL_UPDATES_PER_STEP updates: verl makes
    train_batch_size // ppo_mini_batch_size * ppo_epochs updates per global step."""
    setting = _int_setting(UPDATES_PER_STEP_ENV, raw, DEFAULT_UPDATES_PER_STEP, 1)
    actor = _get(config, "actor_rollout_ref", "actor")
    sizes = (
        _get(config, "data", "train_batch_size"),
        _get(actor, "ppo_mini_batch_size"),
        _get(actor, "ppo_epochs"),
    )
    if setting is None or not all(isinstance(n, int) and n > 0 for n in sizes):
        return
    batch, mini, epochs = sizes
    updates = batch // mini * epochs
    if setting != updates:
        _log_once(
            "verl_driver_updates",
            f"verl makes {updates} actor updates per global step (data.train_batch_size "
            f"{batch} // actor.ppo_mini_batch_size {mini} * ppo_epochs {epochs}) but the actor "
            f"ranks close a step every {UPDATES_PER_STEP_ENV}={setting}: their steps are not "
            f"verl's, nor those of this entropy and reward; set {UPDATES_PER_STEP_ENV}={updates}",
        )


def _unsupported() -> str | None:
    """Why Tracking is not one the wrap knows, or None."""
    version = Version(verl.__version__)
    low, high = SUPPORTED_VERL
    if not low <= version < high:
        return f"verl {version} (the wrap knows {low} <= verl < {high})"
    for name, expected in _SIGNATURES.items():
        method = getattr(Tracking, name, None)
        if not callable(method):
            return f"verl's Tracking has no {name}"
        params = tuple(inspect.signature(method).parameters)
        if params != expected:
            return f"verl's Tracking.{name}{params} is not {expected}"
    return None


def install() -> bool:
    """Wrap verl's Tracking (once) so that a trainer with loss_mode=entmon reports each step's
    METRICS to the run; False, and Tracking untouched, on a verl the wrap does not know."""
    if getattr(Tracking, _WRAPPED, False):
        return True
    problem = _unsupported()
    if problem is not None:
        _log_once(
            "verl_driver_version",
            f"verl runs with loss_mode={LOSS_MODE} will report no entropy or reward: {problem}",
        )
        return False
    init: Callable[..., None] = Tracking.__init__
    log: Callable[..., None] = Tracking.log
    finish: Callable[..., None] = Tracking.finish
    init_signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        driver = None
        try:
            config = init_signature.bind(self, *args, **kwargs).arguments.get("config")
            driver = VerlDriver.from_config(config)
        except Exception as e:  # a monitor that cannot start costs the run its reports only
            _log_once("verl_driver_start", f"driver not reporting: {e!r}")
        self.__dict__[_DRIVER] = driver

    @functools.wraps(log)
    def log_(self: Any, data: Any, step: Any, backend: Any = None) -> None:
        log(self, data=data, step=step, backend=backend)
        driver: VerlDriver | None = self.__dict__.get(_DRIVER)
        if driver is not None and isinstance(data, Mapping):
            driver.log(data, step)

    @functools.wraps(finish)
    def finish_(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            finish(self, *args, **kwargs)
        finally:
            driver: VerlDriver | None = self.__dict__.pop(_DRIVER, None)
            if driver is not None:
                driver.close()

    Tracking.__init__ = __init__  # type: ignore[method-assign]
    Tracking.log = log_  # type: ignore[method-assign]
    Tracking.finish = finish_  # type: ignore[method-assign]
    setattr(Tracking, _WRAPPED, True)
    return True
