"""The package as a user installs it: a wheel built from the checkout, installed (not
editable) into a fresh virtualenv outside the checkout, serving from an empty directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

RUNTIME_FILES = (
    "app/migrations/env.py",
    "app/migrations/versions/0001_initial.py",
    "app/timescale/policies.sql",
    "app/examples/index.html",
    "app/examples/static/metrics.js",
    "app/examples/static/sample.webm",
    "app/dashboard/index.html",
    "app/dashboard/main.js",
    "app/dashboard/vendor/uPlot.iife.min.js",
    "app/dashboard/vendor/uPlot.LICENSE",
    "app/client/vidmetrics.js",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_wheel_and_sdist_carry_what_serving_needs(dist: Path) -> None:
    wheel = next(dist.glob("vidmetrics-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in RUNTIME_FILES:
        assert name in names, name
    sdist = next(dist.glob("vidmetrics-*.tar.gz"))
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    for name in (
        "migrations/env.py",
        "timescale/policies.sql",
        "examples/index.html",
        "requirements.lock",
    ):
        assert name in members, name


def test_installed_wheel_serves_from_an_empty_directory(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "-r", str(ROOT / "requirements.lock")],
        check=True,
        capture_output=True,
        timeout=900,
    )
    wheel = next(dist.glob("vidmetrics-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300
    )
    exe = env_dir / "bin" / "vidmetrics"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("vidmetrics 0.")

    workdir = tmp_path / "empty"
    workdir.mkdir()
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METRICS_", "DATABASE_URL", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update({"PORT": str(port), "HOST": "127.0.0.1", "METRICS_PASSWORD": "pw"})
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "serve"], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "<video" in page.text
        assert httpx.get(f"{base}/static/sample.webm").status_code == 200
        assert "export class Metrics" in httpx.get(f"{base}/client/vidmetrics.js").text
        answer = httpx.post(
            f"{base}/api/v1/plays",
            auth=("admin", "pw"),
            json={"query": {"key": "any"}, "interval": "1 day"},
        )
        assert answer.status_code == 200 and answer.json() == {"views": []}
        assert (workdir / ".vidmetrics").is_dir()  # its data went where it was started
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
