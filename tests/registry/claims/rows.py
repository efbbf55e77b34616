"""The claims row builder (as integrations/resources.py holds the others'): imported from
`ready()`, since it needs the portal's models loaded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# The helpers every row builder of integrations/resources.py uses: a fourth resource added there
# would use them too.
from integrations.client import lower_keys, safe_id
from integrations.resources import _bool, _date, _decimal, _text, _when, _zywave_id


def claim_row(
    connection_id: int, run_id: int, record: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The mirror columns of one Zywave claim record (field name -> value)."""
    r = lower_keys(record)
    return {
        "connection_id": connection_id,
        "zywave_id": _zywave_id(r, "claim"),
        "account_zywave_id": safe_id(r.get("accountid")) or "",
        "claim_number": _text(r, "claimnumber", 30),
        "loss_date": _date(r, "lossdate"),
        "amount": _decimal(r, "amount"),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
        "updated_at_zywave": _when(r, "updateddatetime"),
        "raw": record,
        "seen_in_run": run_id,
        "synced_at": now,
        "changed_at": now,
        "deleted_at": None,
    }
