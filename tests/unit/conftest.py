"""The unit layer: pure functions and small classes, in-process, fast.

As in Ray Data's own unit suite, a unit test may not start Ray, sleep, or run a subprocess: each of
those raises here. Code under test that needs Ray gets a fake (``monkeypatch.setitem(sys.modules,
"ray", fake)``); anything that truly needs a process or a cluster belongs in tests/integration/."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest


class ForbiddenInUnitTests(AssertionError):
    pass


def _forbid(what: str):
    def refuse(*args, **kwargs):
        raise ForbiddenInUnitTests(
            f"{what} is not allowed in a unit test; use a fake, or move the test to tests/integration/"
        )

    return refuse


class _NoRay(types.ModuleType):
    def __getattr__(self, name):
        raise ForbiddenInUnitTests(f"ray.{name}: Ray is not allowed in a unit test; install a fake ray module")


@pytest.fixture(autouse=True)
def _unit_test_guards(monkeypatch):
    monkeypatch.setattr(time, "sleep", _forbid("time.sleep"))
    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, _forbid(f"subprocess.{name}"))
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "init", _forbid("ray.init"))
    else:
        monkeypatch.setitem(sys.modules, "ray", _NoRay("ray"))
