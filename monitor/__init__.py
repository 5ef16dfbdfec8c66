"""entmon monitor service: ingest, query, control and Prometheus exposition over Redis."""
