"""Patient-ID pseudonymisation (octbatch.phi) and frame entries crossing to Ray workers."""

import hashlib
import hmac
import os
import stat

import pytest

from octbatch.errors import OctbatchError
from octbatch.phi import resolve_pseudonymizer


def test_keyed_hmac_from_key_file_and_env(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"  " + b"s" * 32 + b"\n")
    p = resolve_pseudonymizer(key_file=str(key), environ={})
    assert p("12345") == hmac.new(b"s" * 32, b"12345", hashlib.sha256).hexdigest()
    assert p(None) is None and p("  ") is None
    e = resolve_pseudonymizer(environ={"OCTBATCH_PHI_KEY": "s" * 32})
    assert e("12345") == p("12345") and e.fingerprint == p.fingerprint
    assert "s" * 32 not in str(p.metadata())


def test_random_key_is_kept_per_table_and_private(tmp_path):
    wd = tmp_path / "out.parquet.parts"
    a = resolve_pseudonymizer(work_dir=str(wd), environ={})
    b = resolve_pseudonymizer(work_dir=str(wd), environ={})
    c = resolve_pseudonymizer(work_dir=str(tmp_path / "other.parts"), environ={})
    assert a("x") == b("x") != c("x")
    assert stat.S_IMODE(os.stat(wd / "phi.key").st_mode) == 0o600
    assert a.metadata()["key_source"] == "random-per-table"


def test_keep_and_bad_keys(tmp_path):
    assert resolve_pseudonymizer("keep", environ={"OCTBATCH_PHI_KEY": "x" * 40})("ID 7") == "ID 7"
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(OctbatchError, match="fewer than 16"):
        resolve_pseudonymizer(key_file=str(short), environ={})
    with pytest.raises(OctbatchError, match="does not exist"):
        resolve_pseudonymizer(key_file=str(tmp_path / "nope"), environ={})
    with pytest.raises(OctbatchError, match="unknown --phi"):
        resolve_pseudonymizer("hash", environ={})


def test_frame_entries_survive_the_ray_shard_packing():
    from octbatch.archive import FileEntry
    from octbatch.frames import FrameEntry, TiffInfo
    from octbatch.ray_executor import pack_shard, unpack_shard
    from octbatch.shards import Shard

    info = TiffInfo("tiff", 2)
    entries = [
        FileEntry("a.jpeg", "/r/a.jpeg", 10, 5),
        FrameEntry("s.tif", "/r/s.tif", 99, 7, 0, info),
        FrameEntry("s.tif", "/r/s.tif", 99, 7, 1, info),
        FrameEntry("x.dcm", "/r/x.dcm", 3, 7, None, None, "not a DICOM file"),
    ]
    back = unpack_shard(pack_shard(Shard("id", entries)))
    assert back.entries == entries


def test_formats_choose_extensions_and_sniffing(tmp_path):
    from octbatch.archive import discover
    from octbatch.frames import discovery_filters

    (tmp_path / "IM1").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "README").write_bytes(b"hello")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.dcm").write_bytes(b"x")

    def names(f):
        return sorted(
            e.path for e in discover(tmp_path, extensions=discovery_filters(f)[0], sniff=discovery_filters(f)[1])
        )  # noqa: E731

    assert names(None) == ["IM1", "a.jpg", "b.dcm"]
    assert names(["jpeg"]) == ["a.jpg"]
    assert names(["dicom"]) == ["IM1", "b.dcm"]
    with pytest.raises(OctbatchError, match="unknown format"):
        discovery_filters(["gif"])
