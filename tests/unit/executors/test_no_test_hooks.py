"""Fault injection lives in tests/helpers (a worker factory), never in the package: no hook that a test
sets through the environment or a config field, no process exit planted for a test."""

from pathlib import Path

import octbatch

FORBIDDEN = ("OCTBATCH_FAULT", "fault_hook", "os._exit(", "_actor_class", "def _fault(")


def test_the_package_holds_no_test_hooks():
    root = Path(octbatch.__file__).parent
    found = [
        f"{path.relative_to(root)}: {word}"
        for path in sorted(root.rglob("*.py"))
        for word in FORBIDDEN
        if word in path.read_text(encoding="utf-8")
    ]
    assert found == []
