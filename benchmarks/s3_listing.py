"""Listing an S3 prefix through octbatch's discovery: seconds and peak memory at 10,000 vs 100,000 keys
(issue 18: "listing 100,000 keys < 10 s; peak memory flat in the number of keys").

The S3 server is moto, in this process (moto.server.ThreadedMotoServer on 127.0.0.1); the keys are
created straight in moto's backend (no HTTP: ~20,000 keys/s instead of ~200/s), one bucket per size
so that a page of one never walks the keys of the other. Each listing runs in a fresh child
process (`octbatch.archive.discover("s3://...")`, the run's own discovery: key filtering, relative
paths, FileEntry per key), sizes alternated, medians; the child reports its seconds and its peak RSS
(VmHWM) before and after the listing.

Each size is also listed by obstore alone (`raw`: the same stream, no octbatch code), which tells
the server's and the client library's share from octbatch's own per-key work.

`--fast-server` replaces moto's ListObjectsV2 (which sorts every key of the bucket for each
1,000-key page: O(N) per page, O(N^2) per listing) with a sorted index and bisect; the responses
are the same keys in the same order. `--canned-server` serves the same keys' ListObjectsV2 pages
from memory (benchmarks/s3_canned.py: http.server, no moto), so that only
the client (obstore + octbatch) is measured: what a server that answers a page in ~1 ms gives.

    python benchmarks/s3_listing.py --keys 10000 100000 --repeats 3 [--fast-server | --canned-server]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CHILD = r"""
import json, os, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from octbatch.archive import IMAGE_EXTENSIONS, discover
from octbatch.objstore import _store
_store(sys.argv[1][5:].split("/")[0])  # the client made before the clock starts
before = hwm()
t0 = time.perf_counter()
if sys.argv[2] == "raw":  # obstore's stream alone: what the server and the client library cost
    import obstore
    bucket, _, prefix = sys.argv[1][5:].partition("/")
    n = sum(len(c) for c in obstore.list(_store(bucket), prefix + "/", chunk_size=1000))
else:
    n = sum(1 for _ in discover(sys.argv[1], extensions=IMAGE_EXTENSIONS))
print(json.dumps({"keys": n, "seconds": time.perf_counter() - t0, "rss_before": before, "rss_peak": hwm()}))
"""


def fill(bucket: str, n: int) -> float:
    """n keys shaped like the archive (CLASS/CLASS-<patient>-<no>.jpeg) straight into moto's backend."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(bucket, "us-east-1")
    classes = ("CNV", "DME", "DRUSEN", "NORMAL")
    t0 = time.perf_counter()
    for i in range(n):
        c = classes[i % 4]
        backend.put_object(bucket, f"oct/{c}/{c}-{100000 + i // 8}-{i % 8}.jpeg", b"\xff\xd8\xff")
    return time.perf_counter() - t0


def patch_listing() -> None:
    """--fast-server: ListObjectsV2 from a sorted index of each bucket's keys (bisect), not a sort per page."""
    import bisect

    from moto.s3.models import S3Backend

    cache: dict = {}

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        names = cache.get(bucket.name)
        if names is None or len(names) != len(bucket.keys):
            names = cache[bucket.name] = sorted(bucket.keys.keys())
        prefix = prefix or ""
        start = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        i = bisect.bisect_right(names, start) if start else bisect.bisect_left(names, prefix)
        page = []
        while i < len(names) and len(page) <= max_keys and names[i].startswith(prefix):
            page.append(bucket.keys[names[i]])
            i += 1
        return self._truncate_result(page, max_keys)

    S3Backend.list_objects_v2 = list_objects_v2  # type: ignore[method-assign]


def key_names(n: int) -> list[str]:
    classes = ("CNV", "DME", "DRUSEN", "NORMAL")
    return sorted(f"oct/{classes[i % 4]}/{classes[i % 4]}-{100000 + i // 8}-{i % 8}.jpeg" for i in range(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast-server", action="store_true")
    ap.add_argument("--canned-server", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    server: Any
    if args.canned_server:
        from s3_canned import CannedS3

        server = CannedS3({f"list-{n}": dict.fromkeys(key_names(n), b"\xff\xd8\xff") for n in args.keys})
        server.__enter__()
        server.stop = lambda: server.__exit__(None, None, None)
        port = int(server.endpoint.rsplit(":", 1)[1])
    else:
        from moto.server import ThreadedMotoServer

        from tests.helpers.s3_server import free_port

        if args.fast_server:
            patch_listing()
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": os.getcwd(),
    }
    try:
        for n in args.keys if not args.canned_server else ():
            print(f"# {n} keys into list-{n}: {fill(f'list-{n}', n):.1f} s", file=sys.stderr)
        runs: dict[tuple[int, str], list[dict]] = {(n, m): [] for n in args.keys for m in ("octbatch", "raw")}
        for r in range(args.repeats):
            for n in args.keys if r % 2 == 0 else reversed(args.keys):
                for mode in ("octbatch", "raw") if r % 2 == 0 else ("raw", "octbatch"):
                    p = subprocess.run(
                        [sys.executable, "-c", CHILD, f"s3://list-{n}/oct", mode],
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    if p.returncode != 0:
                        raise SystemExit(p.stderr)
                    got = json.loads(p.stdout)
                    assert got["keys"] == n, got
                    runs[(n, mode)].append(got)
                    print(f"# {n} {mode}: {got}", file=sys.stderr)
    finally:
        server.stop()
    rows = {}
    for (n, mode), rs in runs.items():
        rows[(n, mode)] = {
            "keys": n,
            "lister": mode,
            "seconds": [round(x["seconds"], 2) for x in rs],
            "median_seconds": round(statistics.median(x["seconds"] for x in rs), 2),
            "keys_per_second": round(n / statistics.median(x["seconds"] for x in rs)),
            "rss_before_mib": round(statistics.median(x["rss_before"] for x in rs), 1),
            "rss_peak_mib": round(statistics.median(x["rss_peak"] for x in rs), 1),
        }
    server_kind = "canned" if args.canned_server else "moto, sorted index" if args.fast_server else "moto"
    print(json.dumps({"server": server_kind, "results": list(rows.values())}, indent=1))


if __name__ == "__main__":
    main()
