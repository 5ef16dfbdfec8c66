from __future__ import annotations

from dashboard import top_tokens


def test_a_token_is_shown_in_its_context_and_empty_columns_are_left_out() -> None:
    tokens = [
        {"cov": 2.0, "logp": -1.0, "advantage": 1.0, "token_id": 7, "position": 3, "rank": 0,
         "text": " 7", "context_before": "so 3 +", "context_after": " = 10"},
        {"cov": 1.0, "logp": -2.0, "advantage": 1.0, "token_id": 9, "position": 0, "rank": 1,
         "text": "9"},
    ]  # fmt: skip
    rows = top_tokens.rows(tokens)
    assert rows[0]["in context"] == "…so 3 +【 7】 = 10…"
    assert rows[1]["in context"] == "【9】"
    assert list(rows[0]) == [
        "in context",
        "cov",
        "logp",
        "advantage",
        "token_id",
        "position",
        "rank",
    ]  # fmt: skip  (no entropy was reported: no column)


def test_without_a_tokenizer_there_is_no_context_column() -> None:
    rows = top_tokens.rows([{"cov": 1.0, "logp": -1.0, "advantage": 0.5, "position": 2}])
    assert rows == [{"cov": 1.0, "logp": -1.0, "advantage": 0.5, "position": 2}]
