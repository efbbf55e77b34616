"""Encrypted fields fail closed, store expressions correctly, and rotate keys."""

from __future__ import annotations

from collections.abc import Callable

import encrypted_model_fields.fields as emf
import pytest
from cryptography.fernet import Fernet, MultiFernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db
from django.db import transaction
from django.db.models import F, Value

from integrations.checks import encryption_key_decrypts_canary, ensure_canary
from integrations.fields import DecryptionError, key_fingerprint
from integrations.models import Connection, EncryptionCanary
from tests.conftest import connection

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()

UseKeys = Callable[..., None]


@pytest.fixture
def use_keys(settings, monkeypatch) -> UseKeys:  # type: ignore[no-untyped-def]
    """The library reads the keys once at import: swap its crypter together with the setting."""

    def use(*keys: str) -> None:
        settings.FIELD_ENCRYPTION_KEY = list(keys)
        monkeypatch.setattr(emf, "CRYPTER", MultiFernet([Fernet(k) for k in keys]))

    return use


def raw(column: str, pk: int) -> str:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM integrations_connection WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_a_token_is_stored_as_ciphertext_and_read_as_plaintext(staff: User) -> None:
    conn = connection(staff, access_token="plain-access-token")
    assert "plain-access-token" not in raw("access_token", conn.pk)
    assert Connection.objects.get(pk=conn.pk).access_token == "plain-access-token"


def test_a_wrong_key_raises_instead_of_returning_ciphertext(staff: User, use_keys: UseKeys) -> None:
    use_keys(KEY_A)
    conn = connection(staff)
    use_keys(KEY_B)
    with pytest.raises(DecryptionError) as caught:
        Connection.objects.get(pk=conn.pk)
    assert "Connection.access_token cannot be decrypted" in str(caught.value)
    assert raw("access_token", conn.pk) not in str(caught.value)


def test_a_plaintext_row_raises_instead_of_passing_through(staff: User) -> None:
    conn = connection(staff)
    with db.cursor() as cursor:
        cursor.execute(
            "UPDATE integrations_connection SET access_token = 'oops' WHERE id = %s", [conn.pk]
        )
    with pytest.raises(DecryptionError):
        Connection.objects.get(pk=conn.pk)


def test_update_with_a_value_expression_encrypts_it(staff: User) -> None:
    conn = connection(staff)
    Connection.objects.filter(pk=conn.pk).update(access_token=Value("via-update"))
    assert "via-update" not in raw("access_token", conn.pk)
    assert Connection.objects.get(pk=conn.pk).access_token == "via-update"


def test_bulk_update_encrypts_each_value(staff: User, other_staff: User) -> None:
    first, second = connection(staff), connection(other_staff)
    first.access_token, second.access_token = "bulk-one", "bulk-two"
    Connection.objects.bulk_update([first, second], ["access_token"])
    assert "bulk-one" not in raw("access_token", first.pk)
    assert "Case" not in raw("access_token", first.pk)
    assert Connection.objects.get(pk=first.pk).access_token == "bulk-one"
    assert Connection.objects.get(pk=second.pk).access_token == "bulk-two"


def test_other_expressions_on_an_encrypted_field_are_refused(staff: User) -> None:
    conn = connection(staff)
    with pytest.raises(TypeError, match="is encrypted"), transaction.atomic():
        Connection.objects.filter(pk=conn.pk).update(access_token=F("zywave_subject"))
    assert Connection.objects.get(pk=conn.pk).access_token == conn.access_token


def test_lookups_on_an_encrypted_field_never_match(staff: User) -> None:
    # Fernet is randomised: equal plaintexts give different ciphertexts. Never filter on it.
    connection(staff, access_token="find-me")
    assert not Connection.objects.filter(access_token="find-me").exists()


def test_the_canary_check_passes_with_the_right_key(db: None) -> None:
    ensure_canary()
    assert encryption_key_decrypts_canary() == []


def test_the_canary_check_names_the_wrong_key(db: None, use_keys: UseKeys) -> None:
    use_keys(KEY_A)
    EncryptionCanary.objects.all().delete()
    ensure_canary()
    use_keys(KEY_B)
    errors = encryption_key_decrypts_canary()
    assert [e.id for e in errors] == ["integrations.E001"]
    assert key_fingerprint(KEY_A) in errors[0].msg
    assert key_fingerprint(KEY_B) in errors[0].msg
    assert KEY_A not in errors[0].msg and KEY_B not in errors[0].msg


def rows_with(n: int) -> list[Connection]:
    """n connections (and the canary) written with whatever key is in use now."""
    EncryptionCanary.objects.all().delete()
    ensure_canary()
    users = [User.objects.create_user(f"user{i}") for i in range(n)]
    return [connection(user, access_token=f"token-{i}") for i, user in enumerate(users)]


def test_rotation_re_encrypts_everything_with_the_first_key(db: None, use_keys: UseKeys) -> None:
    use_keys(KEY_A)
    conns = rows_with(5)
    use_keys(KEY_B, KEY_A)
    call_command("rotate_encryption_key", batch_size=2)
    use_keys(KEY_B)  # the old key is gone: every value must still read
    assert [Connection.objects.get(pk=c.pk).access_token for c in conns] == [
        f"token-{i}" for i in range(5)
    ]
    assert encryption_key_decrypts_canary() == []


def test_rotation_twice_in_a_row_changes_nothing_the_second_time(
    db: None, use_keys: UseKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    use_keys(KEY_A)
    conns = rows_with(3)
    use_keys(KEY_B, KEY_A)
    call_command("rotate_encryption_key")
    before = raw("access_token", conns[0].pk)
    capsys.readouterr()
    call_command("rotate_encryption_key")
    out = capsys.readouterr().out
    assert "integrations.Connection.access_token: 0 re-encrypted, 3 already on the first key" in out
    assert raw("access_token", conns[0].pk) == before


def test_an_interrupted_rotation_finishes_when_run_again(
    db: None, use_keys: UseKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(KEY_A)
    conns = rows_with(6)
    use_keys(KEY_B, KEY_A)
    # An operator's Ctrl-C at an exact point cannot be produced by a real component: simulate it.
    real_rotate, calls = emf.CRYPTER.rotate, []

    def interrupted(token: bytes) -> bytes:
        calls.append(token)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_rotate(token)

    monkeypatch.setattr(emf.CRYPTER, "rotate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        call_command("rotate_encryption_key", batch_size=2)
    monkeypatch.setattr(emf.CRYPTER, "rotate", real_rotate)
    call_command("rotate_encryption_key", batch_size=2)
    use_keys(KEY_B)
    assert [Connection.objects.get(pk=c.pk).access_token for c in conns] == [
        f"token-{i}" for i in range(6)
    ]


def test_rotation_reports_values_no_key_can_read(db: None, use_keys: UseKeys) -> None:
    use_keys(KEY_A)
    rows_with(1)
    use_keys(KEY_B)
    with pytest.raises(CommandError, match="could not be decrypted"):
        call_command("rotate_encryption_key")
