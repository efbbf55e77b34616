"""System checks of integrations/checks.py beyond the key canary (E001, in test_fields.py):
integrations.W001, WEBHOOKS_ALLOW_PRIVATE on with DEBUG off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from django.core import checks

from integrations.checks import PRIVATE_WEBHOOKS, webhooks_allow_private
from tests.portal.test_production import production_env

ROOT = Path(__file__).resolve().parents[2]


def test_it_warns_when_private_endpoints_are_allowed_with_debug_off(settings: Any) -> None:
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    (warning,) = webhooks_allow_private()
    assert warning.id == "integrations.W001" and warning.level == checks.WARNING
    # It says what the setting lets through, not only that it is on.
    for allowed in ("plain HTTP", "127.0.0.1", "10.0.0.0/8", "169.254.169.254", "own network"):
        assert allowed in warning.msg
    assert warning.msg == PRIVATE_WEBHOOKS
    assert "WEBHOOKS_ALLOW_PRIVATE" in str(warning.hint)


def test_it_is_quiet_in_development_and_when_the_rules_hold(settings: Any) -> None:
    settings.DEBUG = True
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert webhooks_allow_private() == []
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    assert webhooks_allow_private() == []


def test_it_is_registered_as_a_security_check(settings: Any, db: None) -> None:
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    found = checks.run_checks(tags=[checks.Tags.security])
    assert "integrations.W001" in [message.id for message in found]
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    found = checks.run_checks(tags=[checks.Tags.security])
    assert "integrations.W001" not in [message.id for message in found]


def test_check_deploy_in_production_warns_of_the_setting_from_the_environment(
    tmp_path: Path,
) -> None:
    """As the image's entrypoint runs it: warnings are printed, they do not stop the start."""

    def check(**overrides: str) -> subprocess.CompletedProcess[str]:
        env = production_env(tmp_path, **overrides)
        if not overrides:
            env.pop("WEBHOOKS_ALLOW_PRIVATE", None)  # nor the caller's
        return subprocess.run(
            [sys.executable, "manage.py", "check", "--deploy"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    allowed = check(WEBHOOKS_ALLOW_PRIVATE="true")
    assert allowed.returncode == 0, allowed.stderr
    assert "integrations.W001" in allowed.stderr + allowed.stdout
    assert "169.254.169.254" in allowed.stderr + allowed.stdout
    default = check()  # unset in production: DEBUG's value, off
    assert default.returncode == 0, default.stderr
    assert "integrations.W001" not in default.stderr + default.stdout
