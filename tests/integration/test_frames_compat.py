"""A results table written before frames existed (no `frame`/DICOM columns) is resumed, not redone."""

import json

import pyarrow.parquet as pq
from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.frames import PROVENANCE_NAMES
from tests.helpers.files import jpeg_bytes, scan


def test_resume_a_table_without_frame_columns(tmp_path, tiny_model):
    root = tmp_path / "a"
    root.mkdir()
    for i in range(5):
        (root / f"NORMAL-1-{i}.jpeg").write_bytes(jpeg_bytes(scan(i)))
    out = tmp_path / "r.parquet"
    run = ["run", str(root), "--out", str(out), "--model", tiny_model, "--json", "-q"]
    assert CliRunner().invoke(cli, run).exit_code == 0
    t = pq.read_table(out)
    old = t.drop_columns(list(PROVENANCE_NAMES))
    pq.write_table(old.replace_schema_metadata(t.schema.metadata), out)
    (root / "NORMAL-1-9.jpeg").write_bytes(jpeg_bytes(scan(9)))
    r = CliRunner().invoke(cli, run)
    s = json.loads(r.stdout)
    assert (s["processed"], s["skipped"], s["rows"]) == (1, 5, 6)
    back = pq.read_table(out)
    assert back.column("frame").null_count == 6 and set(PROVENANCE_NAMES) <= set(back.column_names)
