"""Settings come from the environment once; a bad value names its variable."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, from_env
from tests.conftest import ROOT


def test_defaults() -> None:
    s = from_env({})
    assert s == Settings()
    assert s.embedded and s.port == 3000 and s.host == "0.0.0.0" and s.auth_enabled
    assert s.data_dir == Path(".vidmetrics") and s.max_body_bytes == 1024 * 1024


def test_values_are_read() -> None:
    s = from_env(
        {
            "DATABASE_URL": "postgresql://u:p@db/x",
            "PORT": "8080",
            "METRICS_AUTH_ENABLED": "false",
            "METRICS_USER": "ops",
            "METRICS_MAX_BODY_BYTES": "2048",
            "LOG_FORMAT": "json",
            "METRICS_RETENTION_DAYS": "400",
        }
    )
    assert not s.embedded and s.port == 8080 and not s.auth_enabled and s.user == "ops"
    assert s.max_body_bytes == 2048 and s.log_format == "json" and s.retention_days == 400
    with pytest.raises(dataclasses_error()):
        s.port = 1  # type: ignore[misc]


def dataclasses_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "env,name",
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"METRICS_AUTH_ENABLED": "maybe"}, "METRICS_AUTH_ENABLED"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"METRICS_PASSWORD_HASH": "plain"}, "METRICS_PASSWORD_HASH"),
        ({"METRICS_MAX_BODY_BYTES": "0"}, "METRICS_MAX_BODY_BYTES"),
        ({"METRICS_MAX_EVENTS_PER_SECOND": "-3"}, "METRICS_MAX_EVENTS_PER_SECOND"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"METRICS_RETENTION_DAYS": "-1"}, "METRICS_RETENTION_DAYS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        from_env(env)


def test_bad_value_stops_startup_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env={"PORT": "nope", "PATH": "/usr/bin:/bin", "METRICS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["vidmetrics: PORT must be an integer, got 'nope'"]


def test_envrc_and_readme_document_every_variable() -> None:
    from app.settings import variables

    names = {name for name, _, _ in variables()}  # the table itself
    assert len(names) > 20
    envrc = (ROOT / ".envrc").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert name in envrc, name
        assert f"`{name}`" in readme, name


def test_workers_get_the_parents_settings_whole() -> None:
    """`serve --workers N` hands each worker the parent's Settings, not the environment
    to read again: every field survives the trip, values the parent fitted included."""
    from app.settings import Settings

    parent = from_env({"METRICS_MAX_SOCKETS": "77", "METRICS_DATA_DIR": "/tmp/x", "PORT": "0"})
    parent = dataclasses.replace(parent, database_url="postgresql://h/db", password="p")
    assert Settings.from_json(parent.to_json()) == parent
