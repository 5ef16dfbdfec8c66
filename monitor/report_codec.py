"""The step report the clients send, as msgspec Structs.

The ingest path validates every report, so this schema is decoded by msgspec rather than pydantic:
about four times faster on a realistic report (bench/README.md, bench_ingest.py). Everything the
API answers stays pydantic (monitor/api_models.py).

Numbers are JSON numbers; a non-finite statistic travels as one of the strings "NaN", "Infinity",
"-Infinity" (strict JSON has no NaN) and is stored as that string, never dropped: it means the run
diverged. Decoding is lax like JSON Schema and pydantic: an integer may be written 3.0, a number
may be a numeric string. Unknown fields are rejected, so a misspelt statistic is a 422, not a
silent loss.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from entmon.wire.ids import DRIVER_RANK
from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, LENGTH_LAYOUT, bucket_count
from entmon.wire.numbers import NonFinite, wire_numbers
from entmon.wire.stats import STAT_NAMES, STATS, Stat

MAX_TOP_TOKENS = 64
MAX_USER_SCALARS = 128
MAX_REPORTS_PER_REQUEST = 1024
# Bounds that keep every integer exact in Redis's Lua numbers (doubles) and counters (int64):
# a batch of 1024 counts of at most 2^40 sums to less than 2^53.
MAX_STEP = 10**12
MAX_RANKS = 1 << 20
MAX_COUNT = 1 << 40
MAX_ENTROPY_SUM = 1e15  # MAX_COUNT tokens of ln(262k vocabulary) nats is 1.4e13
MAX_TIME = 1e11  # unix seconds; also keeps NaN out: reads take the max of a step's times

Number = float | NonFinite
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
ENTROPY_BUCKETS = bucket_count(ENTROPY_LAYOUT)
COVARIANCE_BUCKETS = bucket_count(COVARIANCE_LAYOUT)
LENGTH_BUCKETS = bucket_count(LENGTH_LAYOUT)
LengthCounts = Annotated[list[Count], Meta(min_length=LENGTH_BUCKETS, max_length=LENGTH_BUCKETS)]


def _doc(text: str) -> Meta:
    return Meta(description=text)


class _Wire(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


def _stat_type(stat: Stat) -> Any:
    kind = Count if stat.integer else Number
    return (Annotated[kind, _doc(stat.help)] if stat.help else kind) | None


# Scalars of one step on one rank, one optional field per statistic of the wire table (send
# what you computed).
if TYPE_CHECKING:

    class StepStats(_Wire):
        def __getattr__(self, name: str) -> Any: ...

else:
    StepStats = msgspec.defstruct(
        "StepStats",
        [(s.name, _stat_type(s), None) for s in STATS],
        bases=(_Wire,),
        module=__name__,
    )


class _Histogram(Struct, forbid_unknown_fields=True):  # stored with its layout and nonfinite
    pass


class EntropyHistogram(_Histogram):
    """Token entropy counts on layout entropy-v1 (entmon/wire/layouts.py)."""

    counts: Annotated[list[Count], Meta(min_length=ENTROPY_BUCKETS, max_length=ENTROPY_BUCKETS)]
    layout: Literal["entropy-v1"] = "entropy-v1"
    nonfinite: Annotated[Count, _doc("NaN values, which belong to no bucket")] = 0


class CovarianceHistogram(_Histogram):
    """Per-token covariance counts on layout cov-symlog-v1 (entmon/wire/layouts.py)."""

    counts: Annotated[
        list[Count], Meta(min_length=COVARIANCE_BUCKETS, max_length=COVARIANCE_BUCKETS)
    ]
    layout: Literal["cov-symlog-v1"] = "cov-symlog-v1"
    nonfinite: Annotated[Count, _doc("NaN values, which belong to no bucket")] = 0


class LengthHistogram(_Histogram):
    """Sequences (rows with a valid token) per response length on layout length-v1
    (entmon/wire/layouts.py)."""

    counts: LengthCounts
    layout: Literal["length-v1"] = "length-v1"
    nonfinite: Annotated[Count, _doc("always 0: a length is finite")] = 0


class EntropyByLength(_Histogram):
    """Per response-length bucket (length-v1): the valid tokens of the sequences of that
    length that came with an entropy, and the sum of their entropies, nats. sums / counts is
    the bucket's mean token entropy; both add across micro-batches and ranks."""

    counts: Annotated[LengthCounts, _doc("valid tokens")]
    sums: Annotated[
        list[Annotated[float, Meta(ge=-MAX_ENTROPY_SUM, le=MAX_ENTROPY_SUM)]],  # NaN: nonfinite
        Meta(min_length=LENGTH_BUCKETS, max_length=LENGTH_BUCKETS, description="entropy sums"),
    ]
    layout: Literal["length-v1"] = "length-v1"
    nonfinite: Annotated[
        Count, _doc("sequences whose entropy sum is not finite, left out of counts and sums")
    ] = 0


class StepHistograms(_Wire):
    entropy: EntropyHistogram | None = None
    covariance: CovarianceHistogram | None = None
    response_length: LengthHistogram | None = None
    entropy_by_length: EntropyByLength | None = None


class TopToken(_Wire):
    cov: Number
    logp: Number
    advantage: Number
    entropy: Number | None = None
    token_id: int | None = None
    position: int | None = None
    text: Annotated[str, Meta(max_length=256)] | None = None
    context_before: Annotated[str, Meta(max_length=256)] | None = None
    context_after: Annotated[str, Meta(max_length=256)] | None = None


UserKey = Annotated[str, Meta(max_length=128)]


class StepReport(_Wire):
    """One training step on one rank. Idempotent per (run, rank, step)."""

    step: Annotated[int, Meta(ge=0, le=MAX_STEP)]
    rank: Annotated[
        int,
        Meta(
            ge=DRIVER_RANK,
            lt=MAX_RANKS,
            description=f"training rank, or {DRIVER_RANK}: the driver, a process that trains "
            "nothing and reports whole-step values (counted in no rank; its statistics are "
            "the step's)",
        ),
    ] = 0
    world_size: Annotated[int, Meta(ge=1, le=MAX_RANKS)] = 1
    time: (
        Annotated[float, Meta(ge=0, le=MAX_TIME, description="unix time the client logged it")]
        | None
    ) = None
    control_version: (
        Annotated[int, Meta(ge=0, le=MAX_STEP, description="control version applied")] | None
    ) = None
    stats: StepStats = msgspec.field(default_factory=StepStats)
    user: Annotated[
        dict[UserKey, Number],
        Meta(max_length=MAX_USER_SCALARS, description="free-form user scalars"),
    ] = msgspec.field(default_factory=dict)
    histograms: StepHistograms = msgspec.field(default_factory=StepHistograms)
    top_tokens: Annotated[list[TopToken], Meta(max_length=MAX_TOP_TOKENS)] = msgspec.field(
        default_factory=list
    )

    def nonfinite_fields(self) -> list[str]:
        """Names of statistics that are NaN or infinite: the run diverged."""
        stats = self.stats
        bad = [k for k in STAT_NAMES if _nonfinite(getattr(stats, k))]
        bad += [f"user.{k}" for k, v in self.user.items() if _nonfinite(v)]
        for name in StepHistograms.__struct_fields__:
            h = getattr(self.histograms, name)
            if h is not None and h.nonfinite:
                bad.append(f"histograms.{name}")
        return bad


def _nonfinite(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, float) and not math.isfinite(value))


# The ingest body: one report or a list of them.
ReportBody = StepReport | Annotated[list[StepReport], Meta(max_length=MAX_REPORTS_PER_REQUEST)]
_DECODER = msgspec.json.Decoder(ReportBody, strict=False)  # 3.0 is an integer, "NaN" a float
_ENCODER = msgspec.json.Encoder()


class ReportError(ValueError):
    """A body that is not a valid report or batch; `loc` locates the field (FastAPI style)."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(_writable(message))  # the 422 quotes the bad name: keep it encodable
        self.loc = tuple(_writable(p) if isinstance(p, str) else p for p in loc)


def _writable(text: str) -> str:
    """Lone surrogates escaped as \\udc80, so the text can be written as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decode_reports(body: bytes) -> list[StepReport]:
    """The reports of an ingest body. Raises ReportError naming the first bad field."""
    try:
        decoded = _DECODER.decode(body)
    except msgspec.ValidationError as e:
        raise ReportError(str(e), ("body", *_loc(str(e)))) from None
    except msgspec.DecodeError as e:
        decoded = _decode_nonstandard(body, e)
    return decoded if isinstance(decoded, list) else [decoded]


def _decode_nonstandard(body: bytes, error: msgspec.DecodeError) -> StepReport | list[StepReport]:
    """Python's json.dumps writes NaN and Infinity as bare literals (and json.loads reads 1e999
    as inf): not JSON, but exactly what a diverged run sends, so it is read, not refused."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ReportError(f"malformed JSON: {error}", ("body",)) from None
    except RecursionError:  # msgspec stops at its own depth limit; json.loads at Python's
        raise ReportError(f"malformed JSON: {error}", ("body",)) from None
    _reject_lone_surrogates(doc)
    try:
        converted: StepReport | list[StepReport] = msgspec.convert(doc, ReportBody, strict=False)
    except msgspec.ValidationError as e:
        raise ReportError(str(e), ("body", *_loc(str(e)))) from None
    return converted


def _reject_lone_surrogates(doc: Any) -> None:
    """msgspec refuses a lone UTF-16 surrogate ("\\udc80"); json.loads reads it into a str no
    UTF-8 encoder can write (nor msgspec's error messages). Refused with a 422 naming where, not
    escaped: a user scalar's name must come back as sent (an escaped name would silently be
    another name) and stored text must be valid Unicode for every reader (I-JSON, RFC 7493).
    Only this fallback path can meet one. Iterative: the document may be deeply nested."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _has_lone_surrogate(value):
            raise ReportError(
                f"text {value!a} holds a lone UTF-16 surrogate: not Unicode text (a client "
                "decoding token bytes should use errors='replace')",
                ("body", *path),
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if _has_lone_surrogate(key):
                    raise ReportError(
                        f"name {key!a} holds a lone UTF-16 surrogate: not Unicode text",
                        ("body", *path),
                    )
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, k), item) for k, item in enumerate(value))


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _loc(message: str) -> tuple[str | int, ...]:
    """Where msgspec's message points: "... - at `$[1].stats`" -> (1, "stats"), plus the name
    of an unknown or missing field. A bad map key reads "- at `key` in `$.user`" and a bad map
    value "- at `$.user[...]`": the map."""
    _, _, where = message.partition(" - at `")
    path = where.rpartition("` in `")[2].removesuffix("`").removeprefix("$").replace("[...]", "")
    loc: list[str | int] = []
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            loc.append(int(part[1:-1]))
        elif part:
            loc.append(part)
    for kind in ("unknown field `", "missing required field `"):
        name = message.partition(kind)[2].partition("`")[0]
        if name:
            loc.append(name)
    return tuple(loc)


def report_from_python(doc: dict[str, Any]) -> StepReport:
    """A report from Python objects (tests, benchmarks)."""
    return msgspec.convert(doc, StepReport)


def encode(doc: Any) -> bytes:
    """JSON of a stored document, non-finite numbers as the strings "NaN", "Infinity",
    "-Infinity". msgspec writes them as null, and stored documents hold no other null (absent
    values are left out), so only a document with a null (or the text "null") takes the slow path.
    """
    raw = _ENCODER.encode(doc)
    if b"null" not in raw:
        return raw
    return _ENCODER.encode(wire_numbers(msgspec.to_builtins(doc)))


def body_json_schema(ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI schema of the ingest body and the components it refers to."""
    (schema,), components = msgspec.json.schema_components([ReportBody], ref_template=ref_template)
    return schema, components
