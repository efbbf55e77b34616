"""Encrypted model fields that fail closed (the key canary is in `checks.py`).

django-encrypted-model-fields 0.6.5 has two silent failures that we close here:

* a value that cannot be decrypted (wrong key, a plaintext row) is returned as the ciphertext
  itself, which would then be used as a token. Our fields raise `DecryptionError` instead.
* every value of an UPDATE, expressions included, passes through `get_db_prep_save`, where the
  stock field encrypts `str(expression)`: `.update(field=Value(...))` and `bulk_update` (which
  writes `Case(When(...))`) store the text of the expression. We encrypt the value inside a
  `Value`, let `bulk_update`'s `Case` through (its inner values are encrypted one by one), and
  refuse every other expression.

The key list is read once, at import, by `encrypted_model_fields.fields.CRYPTER` (a
MultiFernet: the first key encrypts, every key decrypts). We always look the crypter up on that
module at call time so tests that swap keys can patch it in one place.
"""

from __future__ import annotations

import hashlib
from typing import Any

import encrypted_model_fields.fields as emf
from cryptography.fernet import InvalidToken
from django.db.models import Case, TextField, Value
from django.db.models.functions import Cast


class DecryptionError(Exception):
    """A stored value cannot be decrypted with any key in FIELD_ENCRYPTION_KEY."""


def encrypt(plaintext: str) -> str:
    return emf.CRYPTER.encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str, where: str = "a stored value") -> str:
    try:
        return emf.CRYPTER.decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            f"{where} cannot be decrypted with any key in FIELD_ENCRYPTION_KEY "
            "(the key is wrong or missing, or the value was written without encryption)"
        ) from None


def key_fingerprint(key: str) -> str:
    """A short, non-secret name for a key, safe to log and show."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def token_fingerprint(token: str | None) -> str:
    """A short, non-secret name for a token: enough to tell two tokens apart in an audit."""
    if not token:
        return ""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class EncryptedTextField(emf.EncryptedTextField, TextField):  # type: ignore[misc]
    """A text column holding Fernet ciphertext; plaintext only in memory."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None:
            return None
        return decrypt(value, f"{self.model.__name__}.{self.name}")

    def to_python(self, value: Any) -> Any:
        # In memory the value is always plaintext: never try to "decrypt" what a form or an
        # assignment hands us (the stock field does, and passes silently when it fails).
        return value

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        if isinstance(value, Value):
            inner = value.value
            return None if inner is None else Value(encrypt(str(inner)))
        inner_case = value.get_source_expressions()[0] if isinstance(value, Cast) else value
        if isinstance(inner_case, Case) and inner_case.output_field is self:
            # bulk_update: Case(When(pk=..., then=Value(v, output_field=self))), wrapped in a
            # Cast on PostgreSQL. Each Value is compiled for saving through this field, so each
            # is encrypted on its own.
            return value
        if hasattr(value, "resolve_expression"):
            raise TypeError(
                f"{self.model.__name__}.{self.name} is encrypted: write a plain value, "
                "not a database expression"
            )
        if value is None:
            return None
        return encrypt(str(value))
