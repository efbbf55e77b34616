"""The claims row builder (as integrations/resources.py holds the others'): imported from
`ready()`, since it needs the portal's models loaded."""

from __future__ import annotations

# The helpers every row builder of integrations/resources.py uses: a fourth resource added there
# would use them too.
from integrations.client import safe_id
from integrations.resources import _bool, _date, _decimal, _text, row_builder

claim_row = row_builder(
    "claim",
    lambda r: {
        "account_zywave_id": safe_id(r.get("accountid")) or "",
        "claim_number": _text(r, "claimnumber", 30),
        "loss_date": _date(r, "lossdate"),
        "amount": _decimal(r, "amount"),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
    },
)
