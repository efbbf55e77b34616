"""The portal's settings plus the test-only claims app (tests/registry/claims): only the
registry proof's own pytest process runs with these (tests/registry/test_fourth_resource.py)."""

from portal.settings import *  # noqa: F403
from portal.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.registry.claims"]
