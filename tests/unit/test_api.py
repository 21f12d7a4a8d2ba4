"""The public Python API: the names the README promises import from the package root."""

from __future__ import annotations


def test_public_names_import_from_the_package_root():
    from octbatch import ExitCode, OctbatchError, RunConfig, RunSummary, __version__, merge, run
    from octbatch._version import __version__ as leaf_version

    assert callable(run) and callable(merge)
    assert RunSummary(out="o", archive="a", run_id="r").to_dict()["exit_code"] == 0
    assert int(ExitCode.FAILED_SHARDS) == 4 and issubclass(OctbatchError, Exception)
    assert RunConfig(archive="a", out="o").slice is None
    assert __version__ == leaf_version
