from __future__ import annotations

import os

import pytest

from tests.helpers.files import DATA_DIR, SHIPPED_MODEL, kept_artifacts


def pytest_collection_modifyitems(config, items):
    if not (DATA_DIR / "manifest.csv").exists():
        skip = pytest.mark.skip(reason=f"real OCT2017 scans not found at {DATA_DIR} (set OCTBATCH_DATA)")
        for item in items:
            if "data" in item.keywords:
                item.add_marker(skip)


# Also for module- and session-scoped fixtures (set up before any autouse fixture) and their subprocesses.
os.environ["OCTBATCH_GATE"] = "off"


@pytest.fixture(autouse=True)
def _gate_off_unless_asked(monkeypatch):
    """The synthetic scans most tests use are cartoons, not B-scans, and the OCT gate (on by default)
    would flag some of them. Tests that are not about the gate run the CLI with OCTBATCH_GATE=off;
    tests/integration/test_gate.py turns it on where the gate is the subject (real scans, non-OCT images,
    awkward files, every decoder)."""
    monkeypatch.setenv("OCTBATCH_GATE", "off")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from tests.helpers.modelgen import tiny_classifier

    return tiny_classifier(
        tmp_path_factory.mktemp("models") / "tiny.onnx", classes=("CNV", "DME", "DRUSEN", "NORMAL"), size=32
    )


@pytest.fixture
def shipped_model() -> str:
    if not SHIPPED_MODEL.exists():
        pytest.skip("the shipped model octbatch/models/oct4-default.onnx is not in this checkout")
    return str(SHIPPED_MODEL)


def pytest_terminal_summary(terminalreporter):
    kept = kept_artifacts()
    if kept:
        terminalreporter.write_sep("-", "test artefacts")
        for p in kept:
            terminalreporter.write_line(p)
