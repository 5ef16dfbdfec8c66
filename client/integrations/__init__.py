"""Trainer integrations, one module per framework, each behind its own extra:
`client.integrations.trl` (`pip install "entmon[trl]"`) and `client.integrations.verl`
(`pip install "entmon[verl]"`). Importing this package imports no framework."""
