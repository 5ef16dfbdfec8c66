"""The highest-covariance tokens as the Run page's table: each in its context when the client
had a tokenizer (the text around it in its response, the token itself in brackets)."""

from __future__ import annotations

from typing import Any

COLUMNS = ("in context", "cov", "logp", "advantage", "entropy", "token_id", "position", "rank")


def in_context(token: dict[str, Any]) -> str | None:
    """`...before [token] after...`; None without decoded text."""
    text = token.get("text")
    if text is None:
        return None
    before, after = token.get("context_before") or "", token.get("context_after") or ""
    return f"{'…' if before else ''}{before}【{text}】{after}{'…' if after else ''}"


def rows(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per token with the table's columns, in order; columns nothing fills are left
    out (no empty "in context" column for a client without a tokenizer)."""
    table = [{"in context": in_context(t), **{c: t.get(c) for c in COLUMNS[1:]}} for t in tokens]
    filled = [c for c in COLUMNS if any(r[c] is not None for r in table)]
    return [{c: r[c] for c in filled} for r in table]
