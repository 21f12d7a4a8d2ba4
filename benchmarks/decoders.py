"""Decoder comparison (issue 2): which CPU decoder turns a scan into the model's input fastest?

Every method produces the same thing: the model's 128x128 (or --size) centre crop of the grayscale
scan, uint8, from the file on disk (read included). Timed with 1 and 2 threads (a thread pool over
the files of each batch of 64, as octbatch does), after a warm-up, median of --repeats runs of at
least --min-seconds. Each method's output is compared with the full-resolution Pillow reference
(octbatch.decode.cpu.decode_reference) so that a faster method that sees a different image shows up.

    python benchmarks/decoders.py [--archive DIR] [--files 2000] [--size 128] [--json OUT.json]

Methods:
  pillow-full        Pillow decode at full size, convert("L"), crop, BOX resize (the reference)
  pillow-draft       Pillow draft("L", size): libjpeg DCT scaling, then crop + BOX resize
  simplejpeg-dct+cv2 simplejpeg decode_jpeg(GRAY, min_width/min_height) + cv2 INTER_AREA  (octbatch's `cpu`)
  cv2-reduced2       cv2.imdecode(IMREAD_REDUCED_GRAYSCALE_2) + crop + cv2 INTER_AREA
  dali-cpu           DALI decoders.image(device="cpu", GRAY) + resize_shorter + centre crop (if importable)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from octbatch.bench import (
    image_files,
    library_versions,
    machine_facts,
    measure_rate,
    real_data_dir,
)
from octbatch.decode.cpu import decode_reference
from octbatch.preprocess import Preprocessing, crop_box, dct_min_size


def _scaled_box(w0, h0, w, h, spec):
    """The crop box of the full-size image, mapped onto a DCT-scaled decode of size w x h."""
    l, t, r, b = crop_box(w0, h0, spec)
    sx, sy = w / w0, h / h0
    return round(l * sx), round(t * sy), round(r * sx), round(b * sy)


def pillow_full(data, spec):
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("L")
    return np.asarray(im.crop(crop_box(im.width, im.height, spec)).resize((spec.width, spec.height), Image.BOX))


def pillow_draft(data, spec):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    w0, h0 = im.size
    im.draft("L", dct_min_size(w0, h0, spec))
    im = im.convert("L")
    return np.asarray(
        im.crop(_scaled_box(w0, h0, im.width, im.height, spec)).resize((spec.width, spec.height), Image.BOX)
    )


def simplejpeg_cv2(data, spec):
    import cv2
    import simplejpeg

    h0, w0, _, _ = simplejpeg.decode_jpeg_header(data)
    mw, mh = dct_min_size(w0, h0, spec)
    img = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=mw, min_height=mh)[:, :, 0]
    l, t, r, b = _scaled_box(w0, h0, img.shape[1], img.shape[0], spec)
    return cv2.resize(img[t:b, l:r], (spec.width, spec.height), interpolation=cv2.INTER_AREA)


def cv2_reduced2(data, spec):
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    h, w = img.shape
    # The reduced decode rounds up; the full size is about twice it.
    l, t, r, b = crop_box(w, h, spec)
    return cv2.resize(img[t:b, l:r], (spec.width, spec.height), interpolation=cv2.INTER_AREA)


METHODS = {
    "pillow-full": pillow_full,
    "pillow-draft": pillow_draft,
    "simplejpeg-dct+cv2": simplejpeg_cv2,
    "cv2-reduced2": cv2_reduced2,
}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _cycling(batches, run_batch):
    """A measure_rate callable: each call decodes the next batch (round robin) and says how many images."""
    k = [0]

    def step() -> int:
        b = batches[k[0] % len(batches)]
        k[0] += 1
        return len(run_batch(b))

    return step


def bench_method(fn, files, spec, threads, *, min_seconds, repeats, batch=64):
    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def one(p):
        return fn(_read(p), spec)

    def run_batch(b):
        return list(pool.map(one, b)) if pool else [one(p) for p in b]

    stats = measure_rate(_cycling(batches, run_batch), min_seconds=min_seconds, repeats=repeats)
    if pool:
        pool.shutdown()
    return stats


def bench_dali(files, spec, threads, *, min_seconds, repeats, batch=64):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, exec_async=False, exec_pipelined=False)
    def pipe_def():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        img = fn.decoders.image(jpegs, device="cpu", output_type=types.GRAY)
        img = fn.resize(img, resize_shorter=spec.height, antialias=True)
        return fn.crop(img, crop=(spec.height, spec.width))

    pipe = pipe_def()
    pipe.build()
    batches = [files[i : i + batch] for i in range(0, len(files) - batch + 1, batch)]

    def run_batch(b):
        pipe.feed_input("jpegs", [np.frombuffer(_read(p), np.uint8) for p in b])
        out = pipe.run()[0]
        return [np.asarray(out.at(i))[:, :, 0] for i in range(len(b))]

    return measure_rate(_cycling(batches, run_batch), min_seconds=min_seconds, repeats=repeats), run_batch(batches[0])


def parity(fn, files, spec, n=64):
    """Mean and max absolute difference (grey levels) from the full-resolution Pillow reference."""
    diffs = []
    for p in files[:n]:
        data = _read(p)
        ref, _ = decode_reference(data, spec)
        diffs.append(np.abs(fn(data, spec).astype(np.int16) - ref.astype(np.int16)))
    d = np.stack(diffs)
    return float(d.mean()), int(d.max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", help="folder of scans [default: the real OCT2017 scans]")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    root = Path(a.archive) if a.archive else real_data_dir()
    if root is None:
        sys.exit("no archive: pass --archive DIR (the real scans are not on this machine)")
    files = [str(p) for p in image_files(root) if str(p).lower().endswith((".jpeg", ".jpg"))][: a.files]
    spec = Preprocessing(input_size=(a.size, a.size))
    threads = [int(t) for t in a.threads.split(",")]
    sizes = [os.path.getsize(p) for p in files]
    print(
        f"# {len(files)} JPEGs from {root} (median {np.median(sizes) / 1e3:.0f} KB), output {a.size}x{a.size} centre crop",
        file=sys.stderr,
    )
    rows = []
    for name, fn in METHODS.items():
        mean_d, max_d = parity(fn, files, spec)
        for t in threads:
            st = bench_method(fn, files, spec, t, min_seconds=a.min_seconds, repeats=a.repeats)
            rows.append({"method": name, "threads": t, **st, "parity_mean_abs": mean_d, "parity_max_abs": max_d})
            print(
                f"{name:20s} x{t}: {st['median']:7.0f} img/s ({st['min']:.0f}-{st['max']:.0f})  vs reference: mean |d| {mean_d:.2f}, max {max_d}",
                file=sys.stderr,
            )
    try:
        import nvidia.dali  # noqa: F401

        have_dali = True
    except ImportError as exc:
        have_dali = False
        rows.append({"method": "dali-cpu", "skipped": f"nvidia.dali not importable: {exc}"})
        print(f"dali-cpu: skipped ({exc})", file=sys.stderr)
    if have_dali:
        for t in threads:
            try:
                st, out = bench_dali(files, spec, t, min_seconds=a.min_seconds, repeats=a.repeats)
                ref = np.stack([decode_reference(_read(p), spec)[0] for p in files[:64]])
                d = np.abs(np.stack(out).astype(np.int16) - ref.astype(np.int16))
                rows.append(
                    {
                        "method": "dali-cpu",
                        "threads": t,
                        **st,
                        "parity_mean_abs": float(d.mean()),
                        "parity_max_abs": int(d.max()),
                    }
                )
                print(
                    f"{'dali-cpu':20s} x{t}: {st['median']:7.0f} img/s  vs reference: mean |d| {d.mean():.2f}",
                    file=sys.stderr,
                )
            except Exception as exc:  # noqa: BLE001 - record, keep the other rows
                rows.append({"method": "dali-cpu", "threads": t, "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"dali-cpu x{t}: failed {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
    res = {
        "machine": machine_facts(),
        "versions": library_versions(),
        "archive": str(root),
        "files": len(files),
        "size": a.size,
        "min_seconds": a.min_seconds,
        "repeats": a.repeats,
        "rows": rows,
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    # Markdown table on stdout, for BENCHMARKS.md
    by = {}
    for r in rows:
        if "median" in r:
            by.setdefault(r["method"], {})[r["threads"]] = r
    print(
        f"| method | {' | '.join(f'{t} thread(s) img/s' for t in threads)} | vs Pillow full-res reference: mean / max abs diff |"
    )
    print("|---|" + "---|" * len(threads) + "---|")
    for m, d in by.items():
        any_r = next(iter(d.values()))
        cells = " | ".join(
            f"{d[t]['median']:,.0f} ({d[t]['min']:,.0f}-{d[t]['max']:,.0f})" if t in d else "–" for t in threads
        )
        print(f"| {m} | {cells} | {any_r['parity_mean_abs']:.2f} / {any_r['parity_max_abs']} |")
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"| {r['method']} | {r.get('skipped') or r.get('error')} | | |")
    return res


if __name__ == "__main__":
    main()
