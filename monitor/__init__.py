"""entmon monitor service: ingest, query, control and Prometheus exposition over Redis.

Kept import-free on purpose: `monitor.layouts` and `monitor.control_rules` are pure Python and the
training-side client imports them without pulling in FastAPI or Redis.
"""
