"""Temporary: makes the sandbox fixtures visible until tests/conftest.py declares
`pytest_plugins = ["tests.sandboxserver"]`."""

from tests.sandboxserver import sandbox, sandbox_clean  # noqa: F401
