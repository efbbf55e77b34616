"""`python -m sandbox <command>`: Django's manage.py for the emulated Zywave."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line([f"{sys.executable} -m sandbox", *sys.argv[1:]])


if __name__ == "__main__":
    main()
