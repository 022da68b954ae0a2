"""Where the files shipped beside the code live.

In a wheel they are inside the package (`app/migrations`, `app/timescale`,
`app/examples`: pyproject.toml maps the repository's top-level folders there at build
time); in a checkout (editable install, tests) they are the top-level folders themselves.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def folder(name: str) -> Path:
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


MIGRATIONS = folder("migrations")
TIMESCALE = folder("timescale")
EXAMPLES = folder("examples")
DASHBOARD = PACKAGE / "dashboard"  # always inside the package
CLIENT = PACKAGE / "client" / "vidmetrics.js"  # the first-party browser client
