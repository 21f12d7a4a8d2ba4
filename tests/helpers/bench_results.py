"""A fixed `octbatch bench` result, for tests of the renderers (Markdown, charts, HTML)."""

from __future__ import annotations


def fixed_result() -> dict:
    versions = {"octbatch": "0.1.0", "onnxruntime": "1.0"}

    def row(kind, name, median, **kw):
        r = {
            "kind": kind,
            "name": name,
            "unit": kw.pop("unit", "img/s"),
            "median": median,
            "min": median * 0.9,
            "max": median * 1.1,
            "q1": median,
            "q3": median,
            "n": 3,
            "samples": [median] * 3,
            "machine": "h",
            "versions": versions,
        }
        r.update(kw)
        return r

    return {
        "created": "2026-11-26T12:00:00+0000",
        "machine": {
            "host": "h",
            "cpu": "Test CPU 9000",
            "cores": 2,
            "memory_gib": 8.0,
            "gpu": None,
            "driver": None,
            "os": "Linux",
            "python": "3.11.7",
        },
        "versions": versions,
        "archive": "synthetic: 100 scans",
        "model": {"path": "/m/tiny.onnx", "sha256": "ab" * 32, "classes": ["A", "B"], "input": [1, 32, 32]},
        "config": {"warmup": 1, "repeats": 3, "min_seconds": 2.0},
        "derived": {
            "decoder": "cpu",
            "decode_ceiling": 2600.0,
            "infer_ceiling": 1600.0,
            "batch_size": 64,
            "threads": 2,
            "rule": "1/(1/decode + 1/infer)",
            "combined_ceiling": 990.5,
            "octbatch_img_s": 900.0,
            "efficiency": 0.9087,
            "ratios": {"naive": 1.84, "ray_data": 6.9},
        },
        "rows": [
            row("stage", "decode", 2600.0, decoder="cpu", threads=2, batch_size=64),
            row("stage", "infer", 1600.0, backend="onnxruntime", precision="fp32", batch_size=64, threads=2),
            row("stage", "parquet_write", 250000.0, unit="rows/s"),
            row("e2e", "octbatch run (local)", 900.0, peak_rss_mb=310.0, executor="local", detail={}),
            row("baseline", "naive", 489.0, peak_rss_mb=250.0, detail={}),
            row(
                "baseline",
                "ray_data",
                130.4,
                peak_rss_mb=1900.0,
                detail={"img_s_without_init": 240.0, "init_seconds": 3.2},
            ),
            {
                "kind": "baseline",
                "name": "dataloader",
                "unit": "img/s",
                "skipped": "torch missing",
                "machine": "h",
                "versions": versions,
            },
            {
                "kind": "scale",
                "name": "discover (count)",
                "unit": "files/s",
                "files": 1000000,
                "seconds": 9.5,
                "median": 105263.0,
                "peak_rss_mb": 60.0,
                "source": "synthetic scans hard-linked",
                "machine": "h",
                "versions": versions,
            },
            {
                "kind": "scale",
                "name": "discover (count)",
                "unit": "files/s",
                "files": 10000,
                "seconds": 0.1,
                "median": 100000.0,
                "peak_rss_mb": 58.0,
                "source": "synthetic scans hard-linked",
                "machine": "h",
                "versions": versions,
            },
        ],
    }
