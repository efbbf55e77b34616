"""A receiver of the portal's webhooks: verify, de-duplicate, order, then pull what changed.

Run it with the secret the portal showed when you subscribed (and your API key, to pull):

    WEBHOOK_SECRET=whsec_... PORTAL_API_KEY=zwk_... python receive_webhooks.py 127.0.0.1 9000

It uses the Standard Webhooks reference library (`pip install standardwebhooks`); any Standard
Webhooks library verifies the same signatures. Standard library otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORTAL = os.environ.get("PORTAL_URL", "http://127.0.0.1:8000")
SEEN: set[str] = set()  # webhook-ids handled (keep these in your database in real life)
LAST_SEQUENCE = 0  # the highest `data.sequence` seen: a jump means an event is still coming


def handle(event: dict[str, Any]) -> None:
    global LAST_SEQUENCE
    data = event["data"]
    if data["sequence"] > LAST_SEQUENCE + 1:
        print(f"events {LAST_SEQUENCE + 1}..{data['sequence'] - 1} not here yet (retries come)")
    LAST_SEQUENCE = max(LAST_SEQUENCE, data["sequence"])
    if event["type"].endswith(".changed"):
        # Thin events: the ids and kinds, then pull the records themselves through the API.
        url = f"{PORTAL}/api/v1/{data['resource']}?updated_since={data['updated_since']}"
        request = urllib.request.Request(  # noqa: S310 (PORTAL_URL is ours: http(s) only)
            url, headers={"Authorization": f"Bearer {os.environ['PORTAL_API_KEY']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            records = json.load(answer)["results"]
        print(f"{event['type']}: {len(data['changes'])} changes, pulled {len(records)} records")
    else:
        print(f"{event['type']}: {data}")


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            # Checks the signature (either secret during a rotation) and the timestamp's age.
            event = Webhook(os.environ["WEBHOOK_SECRET"]).verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        message_id = self.headers["webhook-id"]  # the same on every retry and replay
        if message_id not in SEEN:
            SEEN.add(message_id)
            handle(event)
        self.send_response(204)  # answer fast; do slow work after answering
        self.end_headers()


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer((host, port), Receiver).serve_forever()
