from __future__ import annotations

from django.apps import AppConfig


class ZywaveConfig(AppConfig):
    name = "sandbox.zywave"
    label = "zywave"
    verbose_name = "Emulated Zywave"
