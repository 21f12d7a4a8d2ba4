"""The baselines `octbatch run` is compared with, each what people write by hand, each run in a child
process (octbatch.bench.children): a naive Pillow + ONNX Runtime loop, a PyTorch DataLoader (or a
multiprocessing pool without torch) feeding ORT, and the Ray Data batch-inference recipe."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..backends.base import softmax
from .archives import image_files

__all__ = ["child_dataloader", "child_naive", "child_ray_data"]


def _list_images(root: str) -> list[str]:
    return [str(p) for p in image_files(Path(root))]


def _pillow_preprocess(path: str, spec):
    """What most people write: Pillow open, convert("L"), centre crop, resize."""
    import numpy as np
    from PIL import Image

    from ..preprocess import crop_box

    with Image.open(path) as im:
        g = im.convert("L")
    box = crop_box(g.width, g.height, spec)
    return np.asarray(g.crop(box).resize((spec.width, spec.height), Image.Resampling.BILINEAR))


def _plain_session(model_path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


def _write_baseline_parquet(out: str, paths, probs_list, errors, classes) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    probs = np.concatenate(probs_list) if probs_list else np.zeros((0, len(classes)), np.float32)
    cols = {"path": paths, "pred": [classes[i] for i in probs.argmax(1)], "confidence": probs.max(1)}
    for j, c in enumerate(classes):
        cols[f"p_{c}"] = probs[:, j]
    cols["error"] = errors
    pq.write_table(pa.table(cols), out, compression="zstd")


def _baseline_setup(spec: dict):
    """What every hand-written baseline starts with: the model, a plain ORT session, the file list."""
    from ..model import load_model_info

    model = load_model_info(spec.get("model"))
    sess = _plain_session(model.path, spec["threads"])
    return model, model.preprocessing, sess, sess.get_inputs()[0].name, _list_images(spec["archive"])


def child_naive(spec: dict) -> dict:
    """Naive loop: decode a batch with Pillow, normalise, ORT, next batch; no overlap; Parquet at the end."""
    import numpy as np

    t0 = time.perf_counter()
    model, p, sess, inp, files = _baseline_setup(spec)
    bs = spec["batch_size"]
    paths: list[str] = []
    probs_list: list = []
    errors: list[str | None] = []
    for i in range(0, len(files), bs):
        imgs = []
        for f in files[i : i + bs]:
            try:
                imgs.append(_pillow_preprocess(f, p))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001
                imgs.append(np.zeros((p.height, p.width), np.uint8))
                errors.append(str(exc))
            paths.append(f)
        x = (np.stack(imgs).astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs_list.append(softmax(sess.run(None, {inp: x})[0]))
    _write_baseline_parquet(spec["out"], paths, probs_list, errors, list(model.classes))
    dt = time.perf_counter() - t0
    return {"files": len(files), "seconds": dt, "img_s": len(files) / dt, "errors": sum(e is not None for e in errors)}


class _PillowDataset:
    """Map-style dataset (the DataLoader contract: __len__/__getitem__) decoding with Pillow."""

    def __init__(self, files, spec):
        self.files, self.spec = files, spec

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import numpy as np

        try:
            return _pillow_preprocess(self.files[i], self.spec), i, ""
        except Exception as exc:  # noqa: BLE001
            return np.zeros((self.spec.height, self.spec.width), np.uint8), i, str(exc) or type(exc).__name__


def _collate(items):
    import numpy as np

    return np.stack([a for a, _, _ in items]), [i for _, i, _ in items], [e for _, _, e in items]


def child_dataloader(spec: dict) -> dict:
    """PyTorch-DataLoader style: worker processes decode with Pillow, the main process runs ORT."""
    import numpy as np

    t0 = time.perf_counter()
    model, p, sess, inp, files = _baseline_setup(spec)
    bs, workers = spec["batch_size"], max(1, spec["threads"])
    ds = _PillowDataset(files, p)
    try:
        from torch.utils.data import DataLoader

        loader: Any = DataLoader(
            ds,  # type: ignore[arg-type]  # a map-style dataset by protocol (__len__/__getitem__), not a subclass
            batch_size=bs,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=2,
        )
        how = f"torch.utils.data.DataLoader(num_workers={workers})"
        batches = iter(loader)
        pool = None
    except ImportError:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers)
        how = f"multiprocessing.Pool({workers}).imap"
        it = pool.imap(ds.__getitem__, range(len(ds)), chunksize=16)

        def gen():
            buf = []
            for item in it:
                buf.append(item)
                if len(buf) == bs:
                    yield _collate(buf)
                    buf = []
            if buf:
                yield _collate(buf)

        batches = gen()
    paths: list[str] = []
    probs_list: list = []
    errors: list[str | None] = []
    for u8, idx, errs in batches:
        u8 = np.asarray(u8)
        x = (u8.astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs_list.append(softmax(sess.run(None, {inp: x})[0]))
        paths.extend(files[i] for i in idx)
        errors.extend(e or None for e in errs)
    if pool is not None:
        pool.close()
    _write_baseline_parquet(spec["out"], paths, probs_list, errors, list(model.classes))
    dt = time.perf_counter() - t0
    return {
        "files": len(paths),
        "seconds": dt,
        "img_s": len(paths) / dt,
        "how": how,
        "errors": sum(e is not None for e in errors),
    }


class _RayPredictor:
    """Ray Data's recommended shape: a callable class that holds the model, one per actor."""

    def __init__(self, model_path: str, spec_json: str, threads: int):
        from ..preprocess import Preprocessing

        self.spec = Preprocessing.from_json(spec_json)
        self.sess = _plain_session(model_path, threads)
        self.inp = self.sess.get_inputs()[0].name

    def __call__(self, batch: dict) -> dict:
        import io

        import numpy as np
        from PIL import Image

        from ..preprocess import crop_box

        p = self.spec
        imgs, errs = [], []
        for data in batch["bytes"]:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    g = im.convert("L")
                g = g.crop(crop_box(g.width, g.height, p)).resize((p.width, p.height), Image.Resampling.BILINEAR)
                imgs.append(np.asarray(g))
                errs.append("")
            except Exception as exc:  # noqa: BLE001
                imgs.append(np.zeros((p.height, p.width), np.uint8))
                errs.append(str(exc) or type(exc).__name__)
        x = (np.stack(imgs).astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs = softmax(self.sess.run(None, {self.inp: x})[0])
        return {
            "path": batch["path"],
            "pred": probs.argmax(1),
            "confidence": probs.max(1),
            "error": np.array(errs, dtype=object),
        }


def child_ray_data(spec: dict) -> dict:
    """Ray Data recipe: read_binary_files -> map_batches(callable class holding an ORT session) -> write_parquet.
    (read_binary_files rather than read_images so that a broken file is a row, not a failed job.)"""
    t_start = time.perf_counter()
    from .._deps import require

    ray = require("ray", purpose="the Ray Data baseline")
    require("ray.data", purpose="the Ray Data baseline")

    from ..model import load_model_info

    model = load_model_info(spec.get("model"))
    threads = max(1, spec["threads"])
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - t_start
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        files = _list_images(spec["archive"])
        t0 = time.perf_counter()
        # One actor per core, as the batch-inference guide does. Their CPU shares leave room for the
        # read and write tasks: with whole CPUs per actor, the actors take every CPU and the read
        # task never gets scheduled (a hang, seen here on 2 cores).
        ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=0.25)
        ds = ds.map_batches(
            _RayPredictor,
            fn_constructor_args=(model.path, model.preprocessing.to_json(), 1),
            batch_size=spec["batch_size"],
            compute=ray.data.ActorPoolStrategy(size=threads),
            num_cpus=(threads - 0.5) / threads,
            batch_format="numpy",
        )
        ds.write_parquet(spec["out"], ray_remote_args={"num_cpus": 0.25})
        dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    total = time.perf_counter() - t_start
    return {
        "files": len(files),
        "seconds": total,
        "img_s": len(files) / total,
        "seconds_without_init": dt,
        "img_s_without_init": len(files) / dt,
        "init_seconds": t_init,
    }
