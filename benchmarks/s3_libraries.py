"""Which S3 library should octbatch use? pyarrow.fs.S3FileSystem vs fsspec/s3fs vs obstore, against
an S3 server on loopback (moto's standalone server, tests/helpers/s3_server.py).

  python benchmarks/s3_libraries.py --keys 20000 --reads 600 --repeats 3

1. listing: every key under a prefix of --keys tiny objects (what discovery needs: key, size, mtime);
   peak Python heap during the listing (tracemalloc) tells whether it streams.
2. reads: --reads real OCT scans (../shared/data/oct2017, else synthetic ones), each read whole, with
   16 threads (decoding overlaps reading in octbatch the same way).
Medians of --repeats, libraries alternated. The server is moto (Python), so the numbers measure each
client's overhead on top of a slow server, not S3 itself: read the ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.s3_server import moto_server  # noqa: E402

BUCKET = "bench"


def clients(srv):
    import obstore
    import pyarrow.fs as pafs
    import s3fs
    from obstore.store import S3Store

    endpoint, ACCESS_KEY, SECRET_KEY = srv.endpoint, srv.access_key, srv.secret_key
    ob = S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        client_options={"allow_http": True},
    )
    pa = pafs.S3FileSystem(
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=endpoint, region="us-east-1", scheme="http"
    )
    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        endpoint_url=endpoint,
        client_kwargs={"region_name": "us-east-1"},
        use_listings_cache=False,
        skip_instance_cache=True,
    )

    def list_obstore(prefix):
        n = 0
        for chunk in obstore.list(ob, prefix, chunk_size=1000):
            for m in chunk:
                n += 1 if m["size"] >= 0 and m["last_modified"] else 0
        return n

    def list_pyarrow(prefix):
        infos = pa.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))
        return sum(1 for i in infos if i.type == pafs.FileType.File and i.mtime is not None)

    def list_s3fs(prefix):
        found = fs.find(f"{BUCKET}/{prefix}", detail=True)
        return sum(1 for v in found.values() if v["type"] == "file" and "LastModified" in v)

    def read_obstore(key):
        return len(obstore.get(ob, key).bytes())

    def read_pyarrow(key):
        with pa.open_input_stream(f"{BUCKET}/{key}") as f:
            return len(f.read())

    def read_s3fs(key):
        return len(fs.cat_file(f"{BUCKET}/{key}"))

    return ob, {
        "obstore": (list_obstore, read_obstore),
        "pyarrow.fs": (list_pyarrow, read_pyarrow),
        "s3fs": (list_s3fs, read_s3fs),
    }


def upload(ob, items, threads=16):
    import obstore

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: obstore.put(ob, kv[0], kv[1]), items))


def scans(n: int) -> list[bytes]:
    data = REPO.parent / "shared" / "data" / "oct2017"
    files = sorted(data.rglob("*.jpeg"))[:n] if data.is_dir() else []
    if len(files) == n:
        return [f.read_bytes() for f in files]
    import numpy as np
    import simplejpeg

    rng = np.random.default_rng(0)
    return [
        simplejpeg.encode_jpeg(rng.integers(0, 255, (496, 512, 1), dtype=np.uint8), colorspace="GRAY") for _ in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    a = ap.parse_args()
    import obstore
    import pyarrow
    import s3fs

    with moto_server() as srv:
        srv.client().create_bucket(Bucket=BUCKET)
        ob, libs = clients(srv)
        t = time.perf_counter()
        upload(ob, [(f"list/d{i % 100:02d}/k{i:07d}.jpeg", b"x") for i in range(a.keys)])
        blobs = scans(a.reads)
        upload(ob, [(f"read/s{i:05d}.jpeg", b) for i, b in enumerate(blobs)])
        print(f"uploaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        keys = [f"read/s{i:05d}.jpeg" for i in range(a.reads)]
        res = {name: {"list_s": [], "list_peak_mib": [], "read_s": []} for name in libs}
        for rep in range(a.repeats):
            order = list(libs) if rep % 2 == 0 else list(reversed(libs))
            for name in order:
                lst, rd = libs[name]
                tracemalloc.start()
                t = time.perf_counter()
                n = lst("list/")
                res[name]["list_s"].append(time.perf_counter() - t)
                res[name]["list_peak_mib"].append(tracemalloc.get_traced_memory()[1] / 2**20)
                tracemalloc.stop()
                assert n == a.keys, (name, n)
                t = time.perf_counter()
                with ThreadPoolExecutor(a.threads) as pool:
                    got = sum(pool.map(rd, keys))
                res[name]["read_s"].append(time.perf_counter() - t)
                assert got == sum(map(len, blobs)), name
        out = {
            "keys": a.keys,
            "reads": a.reads,
            "threads": a.threads,
            "mean_object_kib": sum(map(len, blobs)) / len(blobs) / 1024,
            "versions": {"obstore": obstore.__version__, "pyarrow": pyarrow.__version__, "s3fs": s3fs.__version__},
            "results": {},
        }
        for name, r in res.items():
            out["results"][name] = {
                "list_keys_per_s": a.keys / statistics.median(r["list_s"]),
                "list_peak_python_heap_mib": statistics.median(r["list_peak_mib"]),
                "reads_per_s": a.reads / statistics.median(r["read_s"]),
                "raw": r,
            }
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
