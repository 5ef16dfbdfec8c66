"""The Redis data model (see monitor/DATA_MODEL.md) and every read and write of it."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from entmon.wire.ids import DRIVER_RANK
from entmon.wire.numbers import from_wire
from monitor.api_models import AuditEntry, Control, StepPoint, ThermostatChange
from monitor.merge import merge_counts, merge_stats, merge_user, with_driver
from monitor.report_codec import StepReport, encode

# The outcome of each report of an ingest (ingest.lua's flags).
DUPLICATE, STORED, EXPIRED = 0, 1, 2
RUNS_KEY = "entmon:runs"  # zset run -> last report time; the only key shared across runs
INGEST_SCRIPT = files("monitor").joinpath("ingest.lua").read_text()
CONTROL_SCRIPT = files("monitor").joinpath("control.lua").read_text()
SAMPLE_SCRIPT = files("monitor").joinpath("sample.lua").read_text()
SNAPSHOT_SCRIPT = files("monitor").joinpath("snapshot.lua").read_text()
READS_IN_FLIGHT = 32  # runs `run_reads` reads at once from a cluster (each one script call)
PIPELINE_RUNS = 500  # runs `run_reads` reads in one round trip from one Redis
# A run's last-report time in entmon:runs (run listing, stale runs leaving /metrics) is written
# at most this often by each process: an ingest request is then one Redis command.
RUNS_REFRESH_S = 1.0
LISTED_MAX = 10_000  # runs whose refresh time a process remembers
AUDIT_CAP = 10_000  # audit entries kept per run
RANK_SCAN_STEPS = 8  # each rank's latest report is looked for in the last 8 steps' reports
RANK_SCAN_MAX = 4096
# A run with a driver (verl's trainer) has it report a step after its ranks: the latest step is
# the newest the driver reported, unless the driver is further behind than this (gone quiet).
DRIVER_LAG_STEPS = 8


@dataclass(frozen=True)
class RunKeys:
    """Every key of one run carries the hash tag {run}: one Redis Cluster slot per run."""

    index: str
    scalars: str
    details: str
    meta: str
    control: str
    audit: str
    gauges: str  # the analysis gauges of /metrics (monitor/gauges.py)
    thermostat: str  # its settings and state (monitor/thermostat/record.py)
    thermostat_log: str  # its decisions
    thermostat_audit: str  # changes of its settings, overrides

    @classmethod
    def of(cls, run: str) -> RunKeys:
        p = f"entmon:{{{run}}}:"
        return cls(
            p + "index",
            p + "scalars",
            p + "details",
            p + "meta",
            p + "control",
            p + "audit",
            p + "gauges",
            p + "thermostat",
            p + "thermostat_log",
            p + "thermostat_audit",
        )


def _field(step: int, rank: int) -> str:
    return f"{step}:{rank}"


_DRIVER_SUFFIX = f":{DRIVER_RANK}"


# Stored documents are written by msgspec in one pass (report_codec.encode); non-finite numbers
# are stored as the strings "NaN", "Infinity" and "-Infinity", which `_load_scalars` and the
# response models turn back into floats. Defaults are written out, so every document has rank,
# world_size, stats, user.
def _scalars_doc(r: StepReport) -> bytes:
    doc: dict[str, Any] = {"step": r.step, "rank": r.rank, "world_size": r.world_size}
    if r.time is not None:
        doc["time"] = r.time
    if r.control_version is not None:
        doc["control_version"] = r.control_version
    return encode(doc | {"stats": r.stats, "user": r.user})


def _details_doc(r: StepReport) -> bytes:
    return encode({"histograms": r.histograms, "top_tokens": r.top_tokens})


def _load_scalars(raw: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(raw)
    for part in ("stats", "user"):
        doc[part] = {k: from_wire(v) for k, v in doc[part].items()}
    return doc


class TooManyRuns(Exception):
    """A report would create a run beyond the configured cap (ENTMON_MAX_RUNS)."""


class Store:
    def __init__(
        self, redis: Redis | RedisCluster, *, retention_steps: int, max_runs: int | None = None
    ) -> None:
        self.redis = redis
        self.retention_steps = retention_steps
        self.max_runs = max_runs
        self._listed: dict[str, float] = {}  # run -> when this process last wrote entmon:runs
        self._ingest = redis.register_script(INGEST_SCRIPT)
        self._set_control = redis.register_script(CONTROL_SCRIPT)
        self._sample = redis.register_script(SAMPLE_SCRIPT)
        self._snapshot = redis.register_script(SNAPSHOT_SCRIPT)

    async def ingest(self, run: str, reports: list[StepReport]) -> tuple[list[int], Control, bool]:
        """Store reports and read the run's control in one script call: one command per
        request. Per report STORED, DUPLICATE ((rank, step) already stored) or EXPIRED (older
        than the retention window: not stored); and whether the run's thermostat is running."""
        k = RunKeys.of(run)
        now = time.time()
        if self.max_runs is not None and run not in self._listed:
            await self._check_room(run)
        args: list[Any] = [now, self.retention_steps]
        for r in reports:
            s = r.stats
            args += [_field(r.step, r.rank), r.step, _scalars_doc(r), _details_doc(r)]
            args += [s.tokens or 0, s.detached or 0, s.penalised or 0, s.client_drops or 0]
        keys = [k.index, k.scalars, k.details, k.meta, k.control, k.thermostat]
        flags, control, new_run, thermostat = await self._ingest(keys, args)
        if new_run or now - self._listed.get(run, -math.inf) >= RUNS_REFRESH_S:
            # entmon:runs is in another cluster slot than the run's keys, so not in the script.
            # A new run (first report, or the first after a DELETE through any process) is
            # listed at once; an existing one is refreshed at most every RUNS_REFRESH_S.
            await self.redis.zadd(RUNS_KEY, {run: now})
            if len(self._listed) >= LISTED_MAX:  # run names come from clients: stay bounded
                self._listed.clear()
            self._listed[run] = now
        return [int(f) for f in flags], _control(control), thermostat == "running"

    async def _check_room(self, run: str) -> None:
        """Refuse a new run beyond max_runs. Asked once per run and process (then the run is
        in `_listed`); runs created at the same moment by several processes may pass it by a
        few."""
        assert self.max_runs is not None
        new = await self.redis.zscore(RUNS_KEY, run) is None
        if new and int(await self.redis.zcard(RUNS_KEY)) >= self.max_runs:
            raise TooManyRuns(
                f"the service keeps at most {self.max_runs} runs (ENTMON_MAX_RUNS): delete "
                "finished ones (DELETE /v1/runs/{run}) before starting another"
            )

    # The pool decodes responses (decode_responses=True): every reply below is str.
    async def _scored(self, key: str, lo: float, hi: float) -> list[tuple[str, float]]:
        rows = await self.redis.zrangebyscore(key, _bound(lo), _bound(hi), withscores=True)
        return cast(list[tuple[str, float]], rows)

    async def _hmget(self, key: str, fields: list[str]) -> list[str | None]:
        return cast(list[str | None], await self.redis.hmget(key, fields)) if fields else []

    async def run_names(self) -> list[str]:
        return cast(list[str], await self.redis.zrevrange(RUNS_KEY, 0, -1))

    async def active_runs(self, stale_after_s: float) -> list[str]:
        rows = await self._scored(RUNS_KEY, time.time() - stale_after_s, math.inf)
        return [run for run, _ in rows]

    async def meta(self, run: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(RunKeys.of(run).meta))

    async def first_steps(self, run: str, n: int) -> list[StepPoint]:
        """The run's first `n` steps, merged (read from the head of the index, so the cost does
        not grow with the run; with over 64 ranks fewer steps may come back)."""
        rows = await self.redis.zrange(RunKeys.of(run).index, 0, n * 64 - 1, withscores=True)
        numbers = sorted({int(score) for _, score in cast(list[tuple[str, float]], rows)})[:n]
        return await self.steps(run, numbers[0], numbers[-1]) if numbers else []

    async def _kept_fields(
        self, key: str, start: float, end: float, every: int, max_points: int | None
    ) -> tuple[list[int], dict[int, list[str]]]:
        """Steps in [start, end] kept by downsampling, with their "step:rank" fields: every
        `every`-th step, widened so at most `max_points` remain; the last step is always kept."""
        by_step: dict[int, list[str]] = defaultdict(list)
        for field, score in await self._scored(key, start, end):
            by_step[int(score)].append(field)
        numbers = sorted(by_step)
        if max_points is not None and len(numbers) > max_points:
            every = max(every, math.ceil(len(numbers) / (max_points - 1)))
        keep = numbers[::every]
        if numbers and keep[-1] != numbers[-1]:
            keep.append(numbers[-1])
        return keep, by_step

    async def steps(
        self,
        run: str,
        start: float = -math.inf,
        end: float = math.inf,
        *,
        every: int = 1,
        max_points: int | None = None,
        stats: frozenset[str] | None = None,
    ) -> list[StepPoint]:
        """Steps in [start, end] merged over ranks, downsampled (see `_kept_fields`); `stats`
        keeps only those statistics (the dashboard asks for what it draws)."""
        k = RunKeys.of(run)
        keep, by_step = await self._kept_fields(k.index, start, end, every, max_points)
        docs = await self._hmget(k.scalars, [f for s in keep for f in by_step[s]])
        grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for raw in docs:
            if raw is not None:  # trimmed by retention between the two reads
                doc = _load_scalars(raw)
                if stats is not None:
                    doc["stats"] = {n: v for n, v in doc["stats"].items() if n in stats}
                grouped[doc["step"]].append(doc)
        return [_merge_step(grouped[s]) for s in keep if grouped[s]]

    async def sampled_steps(
        self, run: str, *, head: int, tail: int, max_points: int
    ) -> tuple[list[StepPoint], bool]:
        """The run's first `head` and last `tail` steps in full plus the steps at `max_points`
        evenly spaced entries of its index, merged; and whether it sampled (False: the index
        held at most head + tail + max_points entries, one per step and rank, and every step is
        there). One server-side script picks the steps (sample.lua), so a 100k-step run costs
        about what a 2k-step run costs (bench/bench_analysis_scrape.py)."""
        k = RunKeys.of(run)
        if int(await self.redis.zcard(k.index)) <= head + tail + max_points:
            return await self.steps(run), False
        fields = cast(list[str], await self._sample(keys=[k.index], args=[head, tail, max_points]))
        grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for raw in await self._hmget(k.scalars, fields):
            if raw is not None:  # trimmed by retention between the reads
                doc = _load_scalars(raw)
                grouped[doc["step"]].append(doc)
        return [_merge_step(grouped[s]) for s in sorted(grouped)], True

    async def first_step(self, run: str) -> int | None:
        rows = await self.redis.zrange(RunKeys.of(run).index, 0, 0, withscores=True)
        return int(cast(list[tuple[str, float]], rows)[0][1]) if rows else None

    async def latest(self, run: str) -> StepPoint | None:
        """The newest step, or in a run with a driver the newest step the driver reported (it
        reports after the ranks, so a newer step lacks its statistics: the entropy and reward
        of a verl run) when that is at most DRIVER_LAG_STEPS behind."""
        k = RunKeys.of(run)
        last = await self.redis.zrevrangebyscore(
            k.index, "+inf", "-inf", start=0, num=1, withscores=True
        )
        if not last:
            return None
        newest = int(cast(list[tuple[str, float]], last)[0][1])
        candidates = [s for s in range(newest, newest - DRIVER_LAG_STEPS - 1, -1) if s >= 0]
        scores = await self.redis.zmscore(k.index, [_field(s, DRIVER_RANK) for s in candidates])
        step = next((s for s, sc in zip(candidates, scores, strict=True) if sc is not None), newest)
        points = await self.steps(run, step, step)
        return points[0] if points else None

    async def complete_step(self, run: str, step: int) -> StepPoint | None:
        """The merged step once it is complete, else None. Complete: in a run with a driver
        (its report at this step or in the DRIVER_LAG_STEPS before), when the driver's report
        is in (it carries the whole step's entropy) and one rank's (every rank applies the same
        control version at a step); without a driver, when every rank of `world_size` is in.
        A later report of the step asks again, so the last one to arrive completes it."""
        k = RunKeys.of(run)
        fields = [f for f, _ in await self._scored(k.index, step, step)]
        earlier = [_field(s, DRIVER_RANK) for s in range(max(step - DRIVER_LAG_STEPS, 0), step)]
        docs = [_load_scalars(raw) for raw in await self._hmget(k.scalars, fields) if raw]
        ranks = [d for d in docs if d["rank"] != DRIVER_RANK]
        if not ranks:
            return None
        point = _merge_step(docs)
        has_driver = point.driver or (
            bool(earlier) and any(s is not None for s in await self.redis.zmscore(k.index, earlier))
        )
        if has_driver:
            return point if point.driver else None
        world = max(int(d.get("world_size") or 1) for d in ranks)
        return point if point.ranks >= world else None

    async def rank_status(self, run: str, world_size: int) -> list[dict[str, Any]]:
        """The latest report of each rank among the run's last reports (RANK_SCAN_STEPS steps'
        worth): rank, step, control_version, time. Ranks further behind are not listed."""
        k = RunKeys.of(run)
        scan = min(RANK_SCAN_MAX, RANK_SCAN_STEPS * (max(1, world_size) + 1))  # + the driver
        fields = cast(list[str], await self.redis.zrevrange(k.index, 0, scan - 1))
        fields = [f for f in fields if not f.endswith(_DRIVER_SUFFIX)]  # a driver is no rank
        latest: dict[int, dict[str, Any]] = {}
        for raw in await self._hmget(k.scalars, fields):
            if raw is None:
                continue
            doc = json.loads(raw)
            if doc["rank"] not in latest:
                latest[doc["rank"]] = {
                    key: doc.get(key) for key in ("rank", "step", "control_version", "time")
                }
        return [latest[r] for r in sorted(latest)]

    async def histograms(self, run: str, step: int) -> dict[str, dict[str, Any]]:
        """Histograms of one step, added over ranks."""
        k = RunKeys.of(run)
        fields = [f for f, _ in await self._scored(k.index, step, step)]
        docs = await self._hmget(k.details, fields)
        by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for raw in docs:
            if raw is not None:
                for name, h in json.loads(raw)["histograms"].items():
                    by_name[name].append(h)
        return {name: merged for name, hs in by_name.items() if (merged := merge_counts(hs))}

    async def control(self, run: str) -> Control:
        return _control(cast(str | None, await self.redis.get(RunKeys.of(run).control)))

    async def set_control(
        self, run: str, expected_version: int, new: Control, entry: AuditEntry
    ) -> Control | None:
        """Store a person's `new` control if the current version is still `expected_version`;
        else return the current control (the caller answers 412). A running thermostat is
        overridden in the same step (control.lua)."""
        k = RunKeys.of(run)
        why = f"control changed by {entry.who} (version {new.version})"
        override = ThermostatChange(
            version=None, who=entry.who, when=entry.when, reason=why + _colon(entry.reason),
            enabled=True, status="overridden",
        )  # fmt: skip
        args: list[str | int] = [
            expected_version,
            new.model_dump_json(),
            entry.model_dump_json(),
            AUDIT_CAP,
            why,
            override.model_dump_json(),
        ]
        keys = [k.control, k.audit, k.thermostat, k.thermostat_audit]
        result = await self._set_control(keys=keys, args=args)
        if int(result[0]) == 1:
            return None
        return Control.model_validate_json(result[1]) if result[1] else Control()

    async def audit(self, run: str, limit: int) -> list[AuditEntry]:
        """Newest first."""
        raw = cast(list[str], await self.redis.lrange(RunKeys.of(run).audit, -limit, -1))
        return [AuditEntry.model_validate_json(r) for r in reversed(raw)]

    async def delete_run(self, run: str) -> bool:
        k = RunKeys.of(run)
        removed = await self.redis.delete(
            k.index, k.scalars, k.details, k.meta, k.control, k.audit, k.gauges,
            k.thermostat, k.thermostat_log, k.thermostat_audit,
        )  # fmt: skip
        removed += await self.redis.zrem(RUNS_KEY, run)
        return bool(removed)

    async def histogram_series(
        self,
        run: str,
        name: str,
        start: float,
        end: float,
        *,
        every: int = 1,
        max_points: int | None = None,
    ) -> list[tuple[int, dict[str, Any]]]:
        """(step, histogram added over ranks) for the steps `_kept_fields` keeps."""
        k = RunKeys.of(run)
        keep, by_step = await self._kept_fields(k.index, start, end, every, max_points)
        docs = await self._hmget(k.details, [f for s in keep for f in by_step[s]])
        hists: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for field, raw in zip([f for s in keep for f in by_step[s]], docs, strict=True):
            if raw is not None and (h := json.loads(raw)["histograms"].get(name)):
                hists[int(field.split(":")[0])].append(h)
        return [(s, m) for s in keep if (m := merge_counts(hists[s]))]

    async def top_tokens(self, run: str, step: int) -> list[dict[str, Any]]:
        """Top-covariance tokens of one step over all ranks, highest covariance first."""
        k = RunKeys.of(run)
        fields = [f for f, _ in await self._scored(k.index, step, step)]
        tokens = [
            {**t, "rank": int(f.split(":")[1])}
            for f, raw in zip(fields, await self._hmget(k.details, fields), strict=True)
            if raw is not None
            for t in json.loads(raw)["top_tokens"]
        ]
        return sorted(tokens, key=lambda t: _descending(float(t["cov"])))

    async def write_gauges(self, run: str, fields: dict[str, str]) -> None:
        await self.redis.hset(RunKeys.of(run).gauges, mapping=cast(Any, fields))

    async def run_reads(
        self, runs: list[str], *, details: bool, ranks: bool
    ) -> list[RunRead | None]:
        """What /metrics and the run list need of each run, one script call per run
        (snapshot.lua), pipelined (a cluster: READS_IN_FLIGHT at once): the cost grows with the
        number of runs, not with their length. None for a run without meta (deleted meanwhile)."""
        args = [int(details), DRIVER_LAG_STEPS, RANK_SCAN_STEPS, RANK_SCAN_MAX, int(ranks)]

        def keys(run: str) -> list[str]:
            k = RunKeys.of(run)
            return [k.index, k.scalars, k.details, k.meta, k.control, k.gauges, k.thermostat]

        if isinstance(self.redis, RedisCluster):  # slots on several nodes: concurrent calls
            gate = asyncio.Semaphore(READS_IN_FLIGHT)

            async def one(run: str) -> list[Any]:
                async with gate:
                    return cast(list[Any], await self._snapshot(keys=keys(run), args=args))

            replies = list(await asyncio.gather(*(one(run) for run in runs)))
        else:  # one round trip per PIPELINE_RUNS runs
            replies = []
            for lo in range(0, len(runs), PIPELINE_RUNS):
                pipe = self.redis.pipeline(transaction=False)
                for run in runs[lo : lo + PIPELINE_RUNS]:
                    await self._snapshot(keys=keys(run), args=args, client=pipe)
                replies += await pipe.execute()
        return [_run_read(run, reply) for run, reply in zip(runs, replies, strict=True)]

    async def ping(self) -> bool:
        return bool(await self.redis.ping())


@dataclass(frozen=True)
class RunRead:
    """One run as snapshot.lua reads it."""

    run: str
    meta: dict[str, str]
    control: Control
    gauges: dict[str, str]
    first_step: int | None
    latest: StepPoint | None
    histograms: dict[str, dict[str, Any]]  # of the latest step, added over ranks
    ranks: list[dict[str, Any]]  # each rank's latest report, as rank_status
    thermostat: dict[str, str]  # its status, settings, target, error (those present)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _run_read(run: str, reply: list[Any]) -> RunRead | None:
    meta_flat, control, gauges_flat, first, latest_docs, detail_docs, rank_docs, thermo = reply
    meta = _pairs(meta_flat)
    if not meta:
        return None
    docs = [_load_scalars(raw) for raw in latest_docs if raw is not None]
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in detail_docs:
        if raw is not None:
            for name, h in json.loads(raw)["histograms"].items():
                by_name[name].append(h)
    ranks: dict[int, dict[str, Any]] = {}
    for field, raw in zip(*rank_docs, strict=True) if rank_docs else ():
        rank = int(field.rpartition(":")[2])  # newest first: only each rank's first is read
        if raw is not None and rank not in ranks:
            doc = json.loads(raw)
            ranks[rank] = {key: doc.get(key) for key in ("rank", "step", "control_version", "time")}
    return RunRead(
        run=run,
        meta=meta,
        control=_control(control),
        gauges=_pairs(gauges_flat),
        first_step=int(float(first)) if first is not None else None,
        latest=_merge_step(docs) if docs else None,
        histograms={n: m for n, hs in by_name.items() if (m := merge_counts(hs))},
        ranks=[ranks[r] for r in sorted(ranks)],
        thermostat={
            name: value
            for name, value in zip(("status", "settings", "target", "error"), thermo, strict=True)
            if value
        },
    )


def _colon(reason: str) -> str:
    return f": {reason}" if reason else ""


def _descending(x: float) -> float:
    """Sort key: largest first, NaN last."""
    return -x if not math.isnan(x) else math.inf


@functools.lru_cache(maxsize=1024)  # every ingest answers the control, which rarely changes
def _control(raw: str | None) -> Control:
    return Control.model_validate_json(raw) if raw else Control()


def _bound(x: float) -> str | float:
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return x


def _merge_step(docs: list[dict[str, Any]]) -> StepPoint:
    ranks = [d for d in docs if d["rank"] != DRIVER_RANK]
    driver = next((d for d in docs if d["rank"] == DRIVER_RANK), None)
    versions = [d["control_version"] for d in ranks if d.get("control_version") is not None]
    times = [d["time"] for d in docs if d.get("time") is not None]
    stats = merge_stats([d["stats"] for d in ranks]) if ranks else {}
    user = merge_user([d["user"] for d in ranks]) if ranks else {}
    if driver is not None:  # whole-step values: laid over the ranks' merge
        stats = with_driver(stats, driver["stats"])
        user = with_driver(user, driver["user"], counts=())
    return StepPoint(
        step=docs[0]["step"],
        ranks=len(ranks),
        driver=driver is not None,
        time=max(times) if times else None,
        control_version=min(versions) if versions else None,  # applied by every rank
        stats=stats,
        user=user,
    )
