"""The sandbox's OIDC signing key: generated on first start, then kept under the var dir.

No Django here: settings.py calls this while it is being imported.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def ensure_rsa_key(path: Path) -> str:
    """Return the PEM private key at `path`, creating it first if it does not exist.

    Several gunicorn workers may import settings at the same moment: the key is written to a
    temporary file and linked into place with O_EXCL semantics, so exactly one key wins and
    every process reads that one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text()


def hex64_token(request: object = None) -> str:
    """A refresh token as Zywave issues them: 64 hex characters (docs/zywave.md §1, seen)."""
    return secrets.token_hex(32)
