"""The profiled proxy (being written)."""

from __future__ import annotations

from rest_framework.views import APIView


class ProxyView(APIView):
    scopes = {"GET": "proxy", "*": "proxy:write"}
