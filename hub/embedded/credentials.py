"""The embedded stack's credentials: made once (strong random), kept in the data folder, reused after.

``tickstock run`` locks its embedded servers down as the compose stack does (docs/operations.md,
"Locked-down deployment"): NATS with the accounts of ``nats-accounts.conf`` (users ``hub``, ``producer``,
``reader``), Redis with a password, PostgreSQL with a password (scram-sha-256). The passwords live in
``<data dir>/credentials.json`` (mode 0600, created exclusively, so two processes starting at once agree
on one set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CREDENTIALS_FILE", "NATS_ACCOUNTS_CONF", "NATS_USERS", "Credentials", "load_or_create"]

CREDENTIALS_FILE = "credentials.json"
NATS_ACCOUNTS_CONF = Path(__file__).with_name("nats-accounts.conf")
# NATS user → the environment variable nats-accounts.conf reads its password from.
NATS_USERS = {
    "hub": "TICKSTOCK_NATS_HUB_PASSWORD",
    "producer": "TICKSTOCK_NATS_PRODUCER_PASSWORD",
    "reader": "TICKSTOCK_NATS_READER_PASSWORD",
}
_PASSWORD_BYTES = 24  # 192 bits


def new_password() -> str:
    """Letters and digits only, starting with a letter: safe in a URL and in NATS' config parser."""
    return "k" + secrets.token_hex(_PASSWORD_BYTES)


@dataclass(frozen=True)
class Credentials:
    nats_hub: str = dataclasses.field(repr=False)
    nats_producer: str = dataclasses.field(repr=False)
    nats_reader: str = dataclasses.field(repr=False)
    postgres: str = dataclasses.field(repr=False)
    redis: str = dataclasses.field(repr=False)

    @classmethod
    def generate(cls) -> Credentials:
        return cls(**{f.name: new_password() for f in dataclasses.fields(cls)})

    def nats_password(self, user: str) -> str:
        return str(getattr(self, f"nats_{user}"))

    def nats_environment(self) -> dict[str, str]:
        """The variables ``nats-accounts.conf`` reads."""
        return {var: self.nats_password(user) for user, var in NATS_USERS.items()}


def load_or_create(data_dir: Path) -> tuple[Credentials, bool]:
    """The credentials kept in ``data_dir`` (made there, mode 0600, when missing); True when made now.

    Raises ``ValueError`` naming the file when it exists but does not hold a full set.
    """
    path = data_dir / CREDENTIALS_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    created = False
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(dataclasses.asdict(Credentials.generate()), out, indent=2)
        created = True
    try:
        raw = json.loads(path.read_text())
        credentials = Credentials(**{f.name: str(raw[f.name]) for f in dataclasses.fields(Credentials)})
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a credentials file ({exc}); move it away to make a new one"
        ) from None
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return credentials, created
