"""The package as users get it: build the sdist, build the wheel from it, install
the wheel into a fresh virtual environment outside the checkout, and run
``migrate``, ``status`` and the demo from there. Catches schema/SQL files (or
anything else) missing from the package, and a version that is not the one
``stripe_sync.__version__`` says. Needs PyPI (pip's cache makes it quick)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stripe_sync import STRIPE_API_VERSION, __version__

ROOT = Path(__file__).resolve().parents[2]


def _run(
    *cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_built_wheel_migrates_reports_and_plays_the_demo(tmp_path: Path, empty_dsn: str) -> None:
    dist = tmp_path / "dist"
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist.
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path, timeout=600)
    wheels = sorted(dist.glob("*.whl"))
    assert [p.name for p in sorted(dist.iterdir())] == [
        f"stripe_sync-{__version__}-py3-none-any.whl",
        f"stripe_sync-{__version__}.tar.gz",
    ]
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python")
    _run(*pip, "install", "-q", f"{wheels[0]}[demo]", cwd=tmp_path, timeout=600)

    # Only the installed package: no checkout on the path, no settings from this run.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "DATABASE_URL", "PYTHON", "CREDENTIALS_DIRECTORY"))
    }
    cli = venv / "bin" / "stripe-sync"
    where = _run(venv / "bin" / "python", "-c", "import stripe_sync; print(stripe_sync.__file__)",
                 cwd=tmp_path, env=env).stdout  # fmt: skip
    assert where.startswith(str(venv)), where
    version = f"stripe-sync {__version__} (Stripe API {STRIPE_API_VERSION})\n"
    assert _run(cli, "--version", cwd=tmp_path, env=env).stdout == version

    db = {**env, "DATABASE_URL": empty_dsn}
    migrations = sorted(p.name for p in (ROOT / "schema").glob("*.sql"))
    out = _run(cli, "migrate", cwd=tmp_path, env=db).stdout
    assert out == f"applied {len(migrations)} migration(s): {', '.join(migrations)}\n"
    status = _run(cli, "status", cwd=tmp_path, env=db).stdout
    assert "daemons listening: 0" in status and status.endswith("ok\n"), status

    demo = _run(cli, "demo", cwd=tmp_path, env=env, timeout=300).stdout
    assert "demo finished" in demo and "succeeded (refund: full)" in demo
