from __future__ import annotations

from django.apps import AppConfig


class ZywaveConfig(AppConfig):
    name = "sandbox.zywave"
    label = "zywave"
    verbose_name = "Emulated Zywave"

    def ready(self) -> None:
        from sandbox.zywave import shapes

        # A shapes file that cannot be read stops the sandbox at start, not at its first answer.
        shapes.loaded()
