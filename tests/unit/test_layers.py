"""The package's layers point one way (issue 23): the queue engine names neither
pipeline, and the daemon's package never imports what developers run beside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stripe_sync

PACKAGE = Path(stripe_sync.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = (
        module.rsplit(".", 1)[0] if path.name != "__init__.py" else module[: -len(".__init__")]
    )
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
    return found


def offending(directory: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in directory.rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(forbidden)
    )


def test_the_queue_engine_names_no_pipeline() -> None:
    forbidden = ("stripe_sync.outbox", "stripe_sync.webhooks", "stripe_sync.mappings")
    assert offending(PACKAGE / "queue", forbidden) == []


def test_the_daemons_package_never_imports_the_devkit() -> None:
    assert offending(PACKAGE, ("stripe_emulator", "stripe_sync_demo")) == [
        # `stripe-sync demo` and `stripe-sync emulator` load them on demand, from the
        # commands that need them: the [demo] extra's packages.
        "stripe_sync/cli.py imports stripe_emulator.cli",
        "stripe_sync/cli.py imports stripe_emulator.cli.main",
        "stripe_sync/cli.py imports stripe_sync_demo.demo",
        "stripe_sync/cli.py imports stripe_sync_demo.demo.main",
    ]


@pytest.mark.parametrize("directory", ["queue", "outbox", "webhooks", "ops", "runtime"])
def test_the_root_is_small_and_each_folder_a_package(directory: str) -> None:
    assert (PACKAGE / directory / "__init__.py").exists()
    assert len(list(PACKAGE.glob("*.py"))) <= 12
