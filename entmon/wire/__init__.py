"""The wire contract between client, service and dashboard: pure Python, no torch, FastAPI or
Redis, so each side imports the one definition.

- `knobs`: the live control knobs (one table: names, defaults, bounds, labels) and loss modes;
- `stats`: the statistic names of a step report and how each merges across ranks;
- `layouts`: the fixed histogram bucket layouts;
- `numbers`: how non-finite numbers travel in JSON;
- `ids`: the run-id pattern and the driver rank.
"""
