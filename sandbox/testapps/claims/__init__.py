"""A test-only resource: insurance claims under accounts (not a Zywave API we emulate).

It proves the registry (zywave.resources): this package is a model, its migration and one
registry entry (apps.py), and nothing else in sandbox/ names it. A sandbox started with
`SANDBOX_EXTRA_APPS=sandbox.testapps.claims` serves, counts, archives and seeds it
(tests/sandbox/test_registry.py); without that, it is not installed.
"""
