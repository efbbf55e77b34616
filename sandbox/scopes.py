"""The Zywave scopes the sandbox knows, and the ones its demo client may ask for.

Plain Python, no Django, on purpose: tests/sandboxserver.py runs in the portal's process (which
cannot load the sandbox's Django modules) and takes its clients' scopes from here, so the tests
never keep a copy of the list that could drift from the sandbox's.
"""

from __future__ import annotations

# docs/zywave.md §2. The scopes each client may ask for are a subset, stored per client
# (zywave.models.ClientPolicy).
ZYWAVE_SCOPES = {
    "openid": "Sign you in",
    "profile": "Your name",
    "email": "Your email address",
    "offline_access": "Stay connected when you are away (refresh tokens)",
    "api.profiles": "List your Zywave profiles",
    "api.accounts": "Read and change accounts and contacts",
    "api.accounts:read": "Read accounts and contacts",
    "api.agencies": "Read and change agencies",
    "api.agencies:read": "Read agencies",
    "api.carriers": "Read and change carriers",
    "api.carriers:read": "Read carriers",
    "api.policies": "Read and change policies",
    "api.policies:read": "Read policies",
    "api.content": "Read and change content",
    "api.content:read": "Read content",
    "api.licenses": "Read and change licenses",
    "api.licenses:read": "Read licenses",
    "api.plans": "Group benefit quoting",
    "api.plans:read": "Read group benefit quotes",
    "api.commercialpolicybenchmark": "Commercial policy benchmark",
    "api.commercialpolicybenchmark:read": "Read commercial policy benchmark",
    "api.industries": "Industries (v3)",
    "api.companies": "Lead insights (v3)",
}

# What the demo client `portal-dev` is registered for (seed.ensure_portal_client), and what the
# tests' clients are registered for and ask for by default.
PORTAL_SCOPES = (
    "openid profile email offline_access api.profiles api.accounts api.accounts:read "
    "api.policies:read api.industries"
)
