"""Re-encrypt every encrypted value with the first key in FIELD_ENCRYPTION_KEY."""

from __future__ import annotations

from typing import Any

import encrypted_model_fields.fields as emf
from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Model
from tqdm import tqdm

from integrations.fields import EncryptedTextField, key_fingerprint
from integrations.models import EncryptionCanary


def encrypted_columns() -> list[tuple[type[Model], str]]:
    return [
        (model, field.column)
        for model in apps.get_models()
        for field in model._meta.get_fields()
        if isinstance(field, EncryptedTextField)
    ]


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value with the first key of FIELD_ENCRYPTION_KEY, in "
        "batches. Safe to interrupt and run again: values already on the first key are skipped. "
        "Afterwards the old keys can be removed from FIELD_ENCRYPTION_KEY."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        current = Fernet(settings.FIELD_ENCRYPTION_KEY[0])
        totals = {"rotated": 0, "current": 0, "undecryptable": 0}
        for model, column in encrypted_columns():
            counts = self.rotate_column(model, column, current, batch_size)
            for key, value in counts.items():
                totals[key] += value
            self.stdout.write(
                f"{model._meta.label}.{column}: {counts['rotated']} re-encrypted, "
                f"{counts['current']} already on the first key, "
                f"{counts['undecryptable']} undecryptable"
            )
        EncryptionCanary.objects.update(
            key_fingerprint=key_fingerprint(settings.FIELD_ENCRYPTION_KEY[0])
        )
        self.stdout.write(
            f"Done: {totals['rotated']} values re-encrypted with key "
            f"{key_fingerprint(settings.FIELD_ENCRYPTION_KEY[0])}, "
            f"{totals['current']} were already current."
        )
        if totals["undecryptable"]:
            raise CommandError(
                f"{totals['undecryptable']} values could not be decrypted with any configured "
                "key and were left as they are. Add the key they were written with and re-run."
            )

    def rotate_column(
        self, model: type[Model], column: str, current: Fernet, batch_size: int
    ) -> dict[str, int]:
        """Walk the table in primary-key order, one committed transaction per batch.

        Each row is written back only if it still holds the ciphertext we read, so a token
        refreshed meanwhile (written with the first key already) is never overwritten.
        """
        table = connection.ops.quote_name(model._meta.db_table)
        pk = connection.ops.quote_name(model._meta.pk.column)  # type: ignore[union-attr]
        col = connection.ops.quote_name(column)
        counts = {"rotated": 0, "current": 0, "undecryptable": 0}
        total = model._default_manager.exclude(**{f"{column}__isnull": True}).count()
        last_pk: Any = None
        with tqdm(total=total, desc=f"{model._meta.label}.{column}", disable=None) as bar:
            while True:
                where = f"{col} IS NOT NULL" + (f" AND {pk} > %s" if last_pk is not None else "")
                params = [last_pk] if last_pk is not None else []
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(
                        f"SELECT {pk}, {col} FROM {table} WHERE {where} "  # noqa: S608
                        f"ORDER BY {pk} LIMIT {int(batch_size)}",
                        params,
                    )
                    rows = cursor.fetchall()
                    if not rows:
                        break
                    for row_pk, ciphertext in rows:
                        counts[
                            self.rotate_value(cursor, table, pk, col, row_pk, ciphertext, current)
                        ] += 1
                    last_pk = rows[-1][0]
                bar.update(len(rows))
        return counts

    def rotate_value(
        self,
        cursor: Any,
        table: str,
        pk: str,
        col: str,
        row_pk: Any,
        ciphertext: str,
        current: Fernet,
    ) -> str:
        try:
            current.decrypt(ciphertext.encode())
            return "current"
        except InvalidToken:
            pass
        try:
            rotated = emf.CRYPTER.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            return "undecryptable"
        cursor.execute(
            f"UPDATE {table} SET {col} = %s WHERE {pk} = %s AND {col} = %s",  # noqa: S608
            [rotated, row_pk, ciphertext],
        )
        return "rotated"
