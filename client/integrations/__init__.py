"""Integrations with training frameworks, one module each, each behind its own extra
(`pip install "entmon[verl]"`). Nothing here is imported by `client` itself."""
