import os

import pytest

from octbatch.archive import discover, parse_name
from octbatch.errors import OctbatchError


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("CNV/CNV-1016042-1.jpeg", ("CNV", "1016042", 1)),
        ("DRUSEN-53018-12.jpeg", ("DRUSEN", "53018", 12)),
        ("dme-9-3.JPEG", ("DME", "9", 3)),
        ("NORMAL/NORMAL-unknown-1a2b3c4d.jpeg", ("NORMAL", None, None)),
        ("train/CNV/scan001.jpeg", ("CNV", None, None)),
        ("test/normal/x.png", ("NORMAL", None, None)),
        ("misc/scan-17.jpeg", (None, None, None)),
        ("FOO-1-2.jpeg", (None, None, None)),
        ("NORMAL/CNV-5-6.jpeg", ("CNV", "5", 6)),  # the file name wins over the folder
    ],
)
def test_parse_kermany_names_and_class_folders(rel, expected):
    assert parse_name(rel) == expected


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_discovery_is_recursive_deterministic_and_filters(tmp_path):
    for rel in [
        "b/CNV-1-1.jpeg",
        "a/DME-2-1.JPG",
        "a/z.PNG",
        "a/y.tif",
        "a/x.TIFF",
        "a/notes.txt",
        "c/d/e/NORMAL-3-3.jpeg",
    ]:
        _touch(tmp_path / rel)
    paths = [e.path for e in discover(tmp_path)]
    assert paths == ["a/DME-2-1.JPG", "a/x.TIFF", "a/y.tif", "a/z.PNG", "b/CNV-1-1.jpeg", "c/d/e/NORMAL-3-3.jpeg"]
    assert [e.path for e in discover(tmp_path)] == paths
    assert [e.path for e in discover(tmp_path, include=["*.jpeg"])] == ["b/CNV-1-1.jpeg", "c/d/e/NORMAL-3-3.jpeg"]
    assert [e.path for e in discover(tmp_path, exclude=["a/*"])] == ["b/CNV-1-1.jpeg", "c/d/e/NORMAL-3-3.jpeg"]
    e = next(iter(discover(tmp_path, include=["b/*"])))
    assert (e.label, e.patient_id, e.image_no, e.size) == ("CNV", "1", 1, 1)


def test_discovery_follows_links_never_loops_and_skips_non_files(tmp_path):
    _touch(tmp_path / "real/CNV-1-1.jpeg")
    os.symlink("real/CNV-1-1.jpeg", tmp_path / "link.jpeg")
    os.symlink(".", tmp_path / "real/self")
    os.symlink("..", tmp_path / "real/up")
    os.symlink("missing.jpeg", tmp_path / "dangling.jpeg")
    (tmp_path / "dir.jpeg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpeg")
    paths = [e.path for e in discover(tmp_path)]
    assert paths == ["link.jpeg", "real/CNV-1-1.jpeg"]


def test_discovery_keeps_non_utf8_names_distinct(tmp_path):
    root = os.fsencode(tmp_path)
    for name in (b"scan-\xff.jpeg", b"scan-\xfe.jpeg"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"x")
    entries = list(discover(tmp_path))
    assert len({e.path for e in entries}) == 2
    for e in entries:
        e.path.encode("utf-8")  # valid text for Arrow
        assert os.path.exists(e.abspath)


def test_discovery_errors_are_user_errors(tmp_path):
    with pytest.raises(OctbatchError, match="does not exist"):
        list(discover(tmp_path / "nope"))
    _touch(tmp_path / "f.jpeg")
    with pytest.raises(OctbatchError, match="not a directory"):
        list(discover(tmp_path / "f.jpeg"))
