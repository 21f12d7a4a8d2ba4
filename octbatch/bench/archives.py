"""The archive a benchmark runs on: the user's, a synthetic one, or the real scans hard-linked to any size.

File lists come from octbatch.archive's discovery, the same walk `octbatch run` makes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..archive import discover
from ..errors import OctbatchError

__all__ = ["image_files", "link_archive", "prepare_archive", "real_data_dir"]


def real_data_dir() -> Path | None:
    """The shared real OCT2017 scans, when this machine has them."""
    for cand in (
        os.environ.get("OCTBATCH_BENCH_DATA"),
        os.path.join(os.getcwd(), "..", "shared", "data", "oct2017"),
        "/work/shared/data/oct2017",
    ):
        if cand and os.path.isdir(cand):
            return Path(cand).resolve()
    return None


def image_files(root: str | os.PathLike) -> list[Path]:
    """The image files under root, in discovery order (what `octbatch run` would read)."""
    return [Path(e.abspath) for e in discover(root)]


def link_archive(sources: Sequence[Path], dest: Path, n: int, *, per_dir: int = 1000) -> Path:
    """An archive of n files under dest made of hard links to `sources` (cycled), so that 1M files
    cost directory entries, not disk. Copies `n`'s worth of names: CLASS/bNNNN/CLASS-rK-<name>.
    Falls back to symlinks across filesystems."""
    dest.mkdir(parents=True, exist_ok=True)
    made_dirs: set[str] = set()
    for i in range(n):
        src = sources[i % len(sources)]
        rnd = i // len(sources)
        cls = src.parent.name if src.parent.name.isupper() else "X"
        sub = dest / cls / f"b{i // per_dir:05d}"
        key = str(sub)
        if key not in made_dirs:
            sub.mkdir(parents=True, exist_ok=True)
            made_dirs.add(key)
        name = src.name if rnd == 0 else f"{src.stem}-r{rnd}{src.suffix}"
        target = sub / name
        try:
            os.link(src, target)
        except FileExistsError:
            pass
        except OSError:
            os.symlink(src, target)
    return dest


def prepare_archive(*, archive: str | None, synthetic: int | None, files: int, workdir: Path) -> tuple[Path, str]:
    """The archive to benchmark and a sentence saying what it is."""
    if archive:
        root = Path(archive).resolve()
        if not root.is_dir():
            raise OctbatchError(
                f"archive {archive} is not a directory", "Give the folder that holds the scans, or --synthetic N."
            )
        if not files:
            return root, f"the user's archive {root}"
        srcs = image_files(root)
        if not srcs:
            raise OctbatchError(f"archive {archive} holds no images", "Give a folder of .jpeg/.png/.tif scans.")
        return link_archive(
            srcs, workdir / "archive", files
        ), f"{files} files hard-linked from {len(srcs)} scans of {root}"
    if synthetic:
        from ..synth import make_archive

        dest = workdir / "archive"
        make_archive(dest, synthetic, seed=0)
        return dest, f"synthetic: {synthetic} OCT-like scans + 3 broken files (octbatch.synth)"
    real = real_data_dir()
    if real is not None:
        srcs = image_files(real)
        return (
            link_archive(srcs, workdir / "archive", files),
            f"real OCT2017 scans from {real}: {files} files hard-linked from {len(srcs)} scans",
        )
    from ..synth import make_archive

    dest = workdir / "archive"
    make_archive(dest, files, seed=0)
    return dest, f"synthetic: {files} OCT-like scans + 3 broken files (no real scans on this machine)"
