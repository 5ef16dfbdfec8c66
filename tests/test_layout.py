"""The shape of the code: the import graph, and that a knob lives in one table.

Read from the source (ast), so a lazy import inside a function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

from entmon.wire.knobs import KNOB_NAMES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("client", "monitor", "dashboard", "entmon")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imported(path: Path, name: str) -> Iterator[str]:
    """Every module `path` imports (absolute names), wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package import counts as its __init__)."""
    known = modules()
    return {
        name: {m for m in imported(path, name) if m in known and m != name}
        for name, path in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_service_imports_neither_the_client_nor_the_dashboard() -> None:
    wrong = {
        (m, i)
        for m, path in modules().items()
        if m.startswith("monitor")
        for i in imported(path, m)
        if i.split(".")[0] in ("client", "dashboard", "torch")
    }
    assert wrong == set()


def test_client_and_dashboard_import_only_the_wire_contract_of_the_rest() -> None:
    for side, others in (
        ("client", ("monitor", "dashboard")),
        ("dashboard", ("monitor", "client")),
    ):
        wrong = {
            (m, i)
            for m, path in modules().items()
            if m.startswith(side)
            for i in imported(path, m)
            if i.split(".")[0] in others or (i.startswith("entmon.") and not _wire(i))
        }
        assert wrong == set(), side


def _wire(module: str) -> bool:
    return module == "entmon.wire" or module.startswith("entmon.wire.")


def test_the_wire_contract_is_pure_python() -> None:
    allowed_stdlib = {"__future__", "collections", "dataclasses", "math", "typing"}
    for m, path in modules().items():
        if _wire(m):
            for i in imported(path, m):
                top = i.split(".")[0]
                assert top in allowed_stdlib or _wire(i), f"{m} imports {i}"


# Where a knob's name may be written: the knob table, and the code that gives the knob its
# meaning (the losses, the advice of the health analysis, the trainer integrations that map a
# framework's config onto it). Plumbing (the client's Control, the service's models, metrics and
# store, the dashboard's form) derives from the table and must not name a knob.
KNOB_TABLE = "entmon/wire/knobs.py"
KNOB_MEANING = {
    "client/losses.py",
    "client/entropy_bonus.py",
    "client/monitor.py",  # policy_loss adds the entropy_coeff bonus to the loss it returns
    "client/selection.py",
    "client/stats.py",
    "client/integrations/trl.py",
    "client/integrations/verl.py",
    "monitor/analysis/health.py",
    "monitor/thermostat/law.py",  # which knobs the thermostat may drive, their sign and range
    "dashboard/preview.py",  # what a setting would select: the selection rules, estimated
    "entmon/demo/stack.py",  # the demo sets the toy's ratios and switches the loss mode
    "entmon/demo/toy.py",
    "entmon/demo/testbeds.py",  # each testbed's ratios, scaled to its mini-batches
    "entmon/demo/testbed/grpo.py",  # like the toy: records the loss mode each step ran under
}
# The loss mode is the one knob a page shows by name (a run's mode in the run list and tiles),
# and verl's own config key of the same name selects entmon's loss in verl.
MODE_SHOWN = {
    "dashboard/views/control.py",
    "dashboard/views/overview.py",
    "dashboard/views/run.py",
    "client/integrations/verl_driver.py",
}


def code_text(path: Path) -> str:
    """The source without comments and docstrings: what names a knob in code."""
    docstrings = {
        (node.body[0].lineno, node.body[0].col_offset)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    }
    with path.open() as f:
        tokens = [
            t.string
            for t in tokenize.generate_tokens(f.readline)
            if t.type != tokenize.COMMENT
            and not (t.type == tokenize.STRING and t.start in docstrings)
        ]
    return " ".join(tokens)


def test_a_knob_is_named_only_in_its_table_and_the_code_that_uses_it() -> None:
    places: dict[str, set[str]] = {}
    for path in modules().values():
        text = code_text(path)
        rel = path.relative_to(ROOT).as_posix()
        for knob in KNOB_NAMES:
            if re.search(rf"\b{knob}\b", text):
                places.setdefault(knob, set()).add(rel)
    for knob in KNOB_NAMES:
        assert KNOB_TABLE in places[knob], knob
        shown = MODE_SHOWN if knob == "loss_mode" else set()
        stray = places[knob] - KNOB_MEANING - shown - {KNOB_TABLE}
        assert stray == set(), f"{knob} is spelt out in {sorted(stray)}: derive it from the table"
