"""Trainer integrations, one module per framework, each behind its extra: `client.integrations.trl`
(`pip install "entmon[trl]"`). Importing this package imports no framework."""
