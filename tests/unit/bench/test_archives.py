"""octbatch.bench.archives: file lists through octbatch.archive's discovery, hard-linked archives of any size."""

from __future__ import annotations

import os

import pytest

from octbatch.bench.archives import image_files, link_archive, prepare_archive
from octbatch.errors import OctbatchError


def _tree(root):
    for rel in ("CNV/b.jpeg", "CNV/a.jpeg", "DME/c.png", "DME/notes.txt", "top.tif"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())


def test_image_files_are_discoverys_files_in_its_order(tmp_path):
    _tree(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == [
        "CNV/a.jpeg",
        "CNV/b.jpeg",
        "DME/c.png",
        "top.tif",
    ]


def test_link_archive_cycles_the_sources_with_new_names(tmp_path):
    _tree(tmp_path / "src")
    srcs = image_files(tmp_path / "src")
    dest = link_archive(srcs, tmp_path / "dest", 6, per_dir=4)
    got = sorted(p.relative_to(dest).as_posix() for p in image_files(dest))
    assert got == [
        "CNV/b00000/a.jpeg",
        "CNV/b00000/b.jpeg",
        "CNV/b00001/a-r1.jpeg",
        "CNV/b00001/b-r1.jpeg",
        "DME/b00000/c.png",
        "X/b00000/top.tif",
    ]
    assert os.path.samefile(dest / "CNV/b00001/a-r1.jpeg", srcs[0])


def test_prepare_archive_refuses_what_is_not_an_archive(tmp_path):
    with pytest.raises(OctbatchError, match="is not a directory"):
        prepare_archive(archive=str(tmp_path / "nope"), synthetic=None, files=0, workdir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OctbatchError, match="holds no images"):
        prepare_archive(archive=str(tmp_path / "empty"), synthetic=None, files=10, workdir=tmp_path)
    root, note = prepare_archive(archive=str(tmp_path / "empty"), synthetic=None, files=0, workdir=tmp_path)
    assert root == (tmp_path / "empty").resolve() and note.startswith("the user's archive")
