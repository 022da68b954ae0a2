"""The admin's password when none is configured: with the embedded database, one made on
first start and kept in the data directory (mode 0600); otherwise a clear refusal."""

from __future__ import annotations

import dataclasses
import secrets

from app.settings import Settings, SettingsError


def admin_password(settings: Settings) -> tuple[Settings, str | None]:
    """With the embedded DB and no password set, generate one on first start (kept in the
    data dir, mode 0600). Returns the settings to use and the password to announce once."""
    if not settings.auth_enabled or settings.password or settings.password_hash:
        return settings, None
    if not settings.embedded:
        raise SettingsError(
            "METRICS_PASSWORD or METRICS_PASSWORD_HASH is required "
            "(or set METRICS_AUTH_ENABLED=false)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "admin-password"
    announce = None
    if not path.exists():
        announce = secrets.token_urlsafe(18)
        path.touch(mode=0o600)
        path.write_text(announce)
    return dataclasses.replace(settings, password=path.read_text().strip()), announce
