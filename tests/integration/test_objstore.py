"""Object-storage plumbing that needs no server (issue 18): URL and option parsing, and the refusals
that must happen before any request is made."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.errors import OctbatchError
from octbatch.objstore import parse_options, split_url


def test_urls_and_storage_options_parse():
    assert split_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert split_url("s3://bucket") == ("bucket", "")
    with pytest.raises(OctbatchError, match="names no bucket"):
        split_url("s3:///x")
    assert parse_options(["Endpoint=http://h:9000", "allow_http = true"]) == {
        "endpoint": "http://h:9000",
        "allow_http": "true",
    }
    with pytest.raises(OctbatchError, match="is not key=value"):
        parse_options(["endpoint"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--out", "ftp://host/r.parquet"],
            "Error: --out ftp://host/r.parquet: only s3:// URLs and file paths are supported",
        ),
    ],
)
def test_unsupported_outputs_are_refused_before_any_request(tmp_path, tiny_model, extra, message):
    (tmp_path / "a").mkdir()
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "a"), "--model", tiny_model, *extra])
    assert res.exit_code == 1, res.output
    assert message in res.stderr and "Traceback" not in res.output


def test_s3_archive_without_obstore_says_how_to_install(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "obstore", None)  # what `import obstore` sees when it is not installed
    res = CliRunner().invoke(
        cli, ["run", "s3://bucket/scans", "--out", str(tmp_path / "r.parquet"), "--model", tiny_model, "-q"]
    )
    assert res.exit_code == 1
    assert "Error: obstore is not installed" in res.stderr and "pip install 'octbatch[s3]'" in res.stderr
