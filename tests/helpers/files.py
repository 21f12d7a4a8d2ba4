"""Files the tests make and the places they find things: synthetic scans as JPEG bytes, the hostile
archive every decoder must survive, the real-data folder, kept artefacts."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("OCTBATCH_DATA", REPO.parent / "shared" / "data" / "oct2017"))
SHIPPED_MODEL = REPO / "octbatch" / "models" / "oct4-default.onnx"


def jpeg_bytes(img: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def scan(seed: int = 0, w: int = 512, h: int = 496) -> np.ndarray:
    from octbatch.synth import make_scan

    return make_scan("NORMAL", np.random.default_rng(seed), width=w, height=h)


def bomb_jpeg(width: int = 30000, height: int = 30000) -> bytes:
    """A small real JPEG whose SOF header claims width x height."""
    data = bytearray(jpeg_bytes(scan(1, 64, 64)))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        seglen = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + seglen
    raise AssertionError("no SOF marker")


# name -> expected status ("ok" | "error"), and the error text expected in the message
BAD_INPUTS = {
    "bad/truncated.jpeg": ("error", "truncated"),
    "bad/random-bytes.jpeg": ("error", "not a recognised image"),
    "bad/empty.jpeg": ("error", "empty file"),
    "bad/bomb.jpeg": ("error", "limit"),
    "odd/cmyk.jpeg": ("ok", None),
    "odd/sixteen-bit.png": ("ok", None),
    "odd/progressive.jpeg": ("ok", None),
    "odd/upper-case.JPG": ("ok", None),
    "odd/scan.tiff": ("ok", None),
}
NON_UTF8_NAME = b"odd/scan-\xff\xfe.jpeg"
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")


def assert_awkward_rows(rows: dict, expected: dict) -> None:
    """Each awkward file's row has the expected status; error rows carry the message and no prediction."""
    for path, (status, msg) in expected.items():
        r = rows[path]
        assert r["status"] == status, (path, r["error"])
        if status == "error":
            assert msg in r["error"], (path, r["error"])
            assert r["pred"] is None and r["p_CNV"] is None
        else:
            assert r["error"] is None and r["pred"] in CLASSES, path


def make_bad_archive(root: Path, good: int = 40) -> dict:
    """An archive with `good` synthetic scans plus every awkward input the runner must survive.

    Returns {relative path: (expected status, expected error text)} for the awkward files."""
    from PIL import Image

    from octbatch.synth import make_archive

    make_archive(root, good, broken=False)
    for d in ("bad", "odd"):
        (root / d).mkdir(exist_ok=True)
    good_jpeg = jpeg_bytes(scan(2))
    (root / "bad/truncated.jpeg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (root / "bad/random-bytes.jpeg").write_bytes(np.random.default_rng(3).bytes(30000))
    (root / "bad/empty.jpeg").write_bytes(b"")
    (root / "bad/bomb.jpeg").write_bytes(bomb_jpeg())
    rgb = np.stack([scan(4)] * 3, axis=-1)
    Image.fromarray(rgb).convert("CMYK").save(root / "odd/cmyk.jpeg", format="JPEG")
    Image.fromarray(scan(5).astype(np.uint16) * 257).save(root / "odd/sixteen-bit.png")
    (root / "odd/progressive.jpeg").write_bytes(jpeg_bytes(scan(6), progressive=True))
    (root / "odd/upper-case.JPG").write_bytes(jpeg_bytes(scan(7)))
    Image.fromarray(scan(8)).save(root / "odd/scan.tiff")
    # A non-UTF-8 file name, a directory named like an image, a fifo, a symlink loop and a link to a file.
    with open(os.path.join(os.fsencode(root), NON_UTF8_NAME), "wb") as f:
        f.write(jpeg_bytes(scan(9)))
    (root / "odd/folder.jpeg").mkdir()
    os.mkfifo(root / "odd/pipe.jpeg")
    os.symlink("..", root / "odd/loop")
    os.symlink("../CNV", root / "odd/cnv-link")
    os.symlink("cmyk.jpeg", root / "odd/link-to-file.jpeg")
    expected = dict(BAD_INPUTS)
    expected["odd/link-to-file.jpeg"] = ("ok", None)
    expected[os.fsencode(NON_UTF8_NAME).decode("utf-8", "backslashreplace")] = ("ok", None)
    return expected


# Files a test keeps for people to look at (e.g. the report's browser screenshot); listed at the end of the run.
ARTIFACTS = Path(os.environ.get("OCTBATCH_ARTIFACTS", REPO / "test-artifacts"))
_KEPT: list[str] = []


def keep_artifact(name: str, data: bytes) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / name
    p.write_bytes(data)
    _KEPT.append(str(p))
    return p


def kept_artifacts() -> list[str]:
    return list(_KEPT)
