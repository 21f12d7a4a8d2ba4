"""Discovery: stream the files of an archive in a deterministic order, with what their names say.

The walk is depth-first with each directory's entries sorted, so the order is the same on every
run and nothing global is sorted: memory stays flat however many files the archive holds.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .errors import OctbatchError

__all__ = ["FileEntry", "IMAGE_EXTENSIONS", "CLASS_NAMES", "discover", "parse_name", "display_path"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
CLASS_NAMES = ("CNV", "DME", "DRUSEN", "NORMAL")
_CLASS_SET = {c.upper(): c for c in CLASS_NAMES}
# Kermany: CNV-1016042-1.jpeg ; renamed copies: CNV-unknown-1a2b3c4d.jpeg
_KERMANY = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<pid>[A-Za-z0-9]+)-(?P<no>\d+)$")
_CLASS_PREFIX = re.compile(r"^(?P<cls>[A-Za-z]+)[-_]")


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the archive root, '/'-separated, valid UTF-8 (see display_path)
    abspath: str  # what open() takes (may hold surrogate escapes for non-UTF-8 names)
    size: int
    mtime_ns: int
    etag: str | None = None  # an S3 object's ETag (octbatch.objstore); a version is then (path, size, etag)

    # What the name says is parsed only for files that get a row now: a resumed run over a
    # million committed files never pays for it.
    def names(self) -> tuple[str | None, str | None, int | None]:
        return parse_name(self.path)

    @property
    def label(self) -> str | None:
        return parse_name(self.path)[0]

    @property
    def patient_id(self) -> str | None:
        return parse_name(self.path)[1]

    @property
    def image_no(self) -> int | None:
        return parse_name(self.path)[2]


def display_path(rel: str) -> str:
    """A relative path as valid UTF-8 text. Names that are not UTF-8 keep their bytes as \\xNN escapes,
    so that every file still gets a distinct, stable row."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")


def parse_name(rel: str) -> tuple[str | None, str | None, int | None]:
    """(label, patient_id, image_no) from a Kermany file name and/or a class folder; None where unsaid."""
    parts = rel.replace("\\", "/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    label = patient = None
    image_no = None
    m = _KERMANY.match(stem)
    if m and m.group("cls").upper() in _CLASS_SET:
        label = _CLASS_SET[m.group("cls").upper()]
        pid = m.group("pid")
        patient = None if pid.lower() == "unknown" else pid
        image_no = int(m.group("no")) if patient is not None else None
    else:
        m2 = _CLASS_PREFIX.match(stem)
        if m2 and m2.group("cls").upper() in _CLASS_SET:
            label = _CLASS_SET[m2.group("cls").upper()]
    # A class folder (train/CNV/x.jpeg) names the label when the file name does not; the nearest wins.
    if label is None:
        for folder in reversed(parts[:-1]):
            if folder.upper() in _CLASS_SET:
                label = _CLASS_SET[folder.upper()]
                break
    return label, patient, image_no


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def discover(
    root: str | os.PathLike,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    skip_dirs: Sequence[str] = (),
    sniff: Callable[[str, str], bool] | None = None,
) -> Iterator[FileEntry]:
    """Yield the image files under ``root`` in a deterministic order.

    Symlinks to files are followed; symlinked directories are followed once (a loop is never
    entered twice). Anything that is not a regular file (directories named x.jpeg, fifos, sockets,
    dangling links) is skipped. ``include``/``exclude`` are globs matched against the relative path
    and the file name. ``skip_dirs`` are absolute paths never entered (e.g. the output's work folder).
    ``sniff(name, path)`` may admit files whose extension is not in ``extensions`` by their content
    (DICOM files without an extension: octbatch.frames.discovery_filters); it is asked only about those.
    An ``s3://bucket/prefix`` root lists the objects under the prefix instead (octbatch/objstore.py).
    """
    if isinstance(root, str) and root.startswith("s3://"):
        from .objstore import discover_objects

        yield from discover_objects(root, include=include, exclude=exclude, extensions=extensions)
        return
    root = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise OctbatchError(f"archive {root} does not exist", "Check the path you gave to octbatch run.") from None
    except PermissionError:
        raise OctbatchError(
            f"archive {root} cannot be read (permission denied)", "Run as a user who can read it."
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OctbatchError(f"archive {root} is not a directory", "Give the folder that holds the scans.")
    exts = tuple(e.lower() for e in extensions)
    skip = {os.path.abspath(d) for d in skip_dirs}
    seen_dirs = {(st.st_dev, st.st_ino)}
    yield from _walk(root, "", exts, tuple(include), tuple(exclude), seen_dirs, skip, sniff)


def _walk(dirpath, rel_dir, exts, include, exclude, seen_dirs, skip, sniff=None) -> Iterator[FileEntry]:
    try:
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
    except (PermissionError, FileNotFoundError, NotADirectoryError, OSError):
        return  # unreadable or vanished folder: nothing in it can be listed
    for e in entries:
        rel = f"{rel_dir}{e.name}"
        try:
            st = e.stat(follow_symlinks=True)
        except OSError:
            continue  # dangling link or vanished entry
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs or e.path in skip:
                continue
            seen_dirs.add(key)
            yield from _walk(e.path, rel + "/", exts, include, exclude, seen_dirs, skip, sniff)
        elif stat.S_ISREG(st.st_mode):
            if not e.name.lower().endswith(exts) and (sniff is None or not sniff(e.name, e.path)):
                continue
            shown = display_path(rel)
            if include and not _matches(shown, include):
                continue
            if exclude and _matches(shown, exclude):
                continue
            yield FileEntry(shown, e.path, st.st_size, st.st_mtime_ns)
