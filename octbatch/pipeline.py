"""`run` and `merge`: discovery -> shards -> executor -> part files -> one results.parquet.

Exactly once: a file's row is committed when its shard's part file is renamed into place. A rerun
with the same --out skips every committed (path, size, mtime), processes the rest, and merges the
previous result, the parts and nothing else into a new file that replaces the old one atomically.
Rows of files that no longer exist are dropped; rows of changed files (size or mtime) are redone.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .archive import FileEntry, discover
from .config import RunConfig, default_threads
from .errors import ExitCode, OctbatchError
from .frames import discovery_filters, entry_row_key, expand, row_key
from .objstore import configure as configure_storage
from .objstore import is_url, parse_options
from .phi import resolve_pseudonymizer
from .results import atomic_write_parquet, file_metadata, make_schema, read_metadata
from .shards import RunLock, WorkDir, in_slice, make_shards, parse_slice

if TYPE_CHECKING:
    from .worker import WorkerConfig

__all__ = ["run", "merge", "RunSummary", "Reporter", "NullReporter"]


class Reporter(Protocol):
    def start(self, what: str) -> None: ...
    def set_total(self, total: int) -> None: ...
    def advance(self, files: int, errors: int) -> None: ...
    def log(self, msg: str) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, what):
        pass

    def set_total(self, total):
        pass

    def advance(self, files, errors):
        pass

    def log(self, msg):
        pass

    def finish(self):
        pass


@dataclass
class RunSummary:
    out: str
    archive: str
    run_id: str
    discovered: int = 0
    skipped: int = 0  # already committed with the same model and settings
    processed: int = 0  # files classified by this invocation
    ok: int = 0
    errors: int = 0  # files of this invocation that could not be read or decoded
    suspect: int = 0  # readable files of this invocation the OCT gate flagged (status=suspect)
    not_oct: int = 0  # readable files of this invocation the OCT gate rejected (status=not_oct)
    gate: str = "off"  # the OCT gate's mode
    failed_shards: list = field(default_factory=list)
    failed_files: int = 0
    dropped_deleted: int = 0  # rows of files no longer in the archive
    rows: int | None = None  # rows in the output file (None when not merged: --shard)
    merged: bool = False
    slice: str | None = None
    seconds: float = 0.0
    startup_seconds: float = 0.0
    files_per_second: float = 0.0
    backend: str = ""
    precision: str = ""
    decoder: str = ""
    model: str = ""
    model_sha256: str = ""
    executor: str = "local"
    workers: dict = field(default_factory=dict)
    worker_nodes: dict = field(default_factory=dict)  # worker -> Ray node id (--executor ray)
    redone_shards: list = field(default_factory=list)  # shards given again after a worker died or a try failed
    exit_code: int = 0
    volumes: int | None = None  # rows written to --volumes

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
def _check_paths(archive: str, out: str) -> None:
    if is_url(archive):
        _check_out(out)  # the archive is checked by listing it
        return
    if not os.path.exists(archive):
        raise OctbatchError(f"archive {archive} does not exist", "Check the path you gave to octbatch run.")
    if not os.path.isdir(archive):
        raise OctbatchError(f"archive {archive} is not a directory", "Give the folder that holds the scans.")
    if not os.access(archive, os.R_OK | os.X_OK):
        raise OctbatchError(f"archive {archive} cannot be read (permission denied)", "Run as a user who can read it.")
    if os.path.isdir(out):
        raise OctbatchError(f"output {out} is a directory", "Give a file name, e.g. --out results.parquet.")
    real_archive = os.path.realpath(archive)
    real_out_dir = os.path.realpath(os.path.dirname(out))
    if real_out_dir == real_archive or real_out_dir.startswith(real_archive + os.sep):
        raise OctbatchError(
            f"output {out} is inside the archive {archive}",
            "Write results outside the archive (a later run would otherwise scan its own work files).",
        )
    _check_out(out)


def _check_out(out: str) -> None:
    if os.path.isdir(out):
        raise OctbatchError(f"output {out} is a directory", "Give a file name, e.g. --out results.parquet.")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OctbatchError(
            f"cannot create the output folder {parent}: {exc.strerror}", "Choose a writable --out location."
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OctbatchError(
            f"output folder {parent} is not writable", "Choose a writable --out location or fix its permissions."
        )


def _keys_of(path: str, with_status: bool = True) -> Iterator[tuple[int, str]]:
    """(key, status) for every row of a results/part file, read column-wise in batches."""
    pf = pq.ParquetFile(path)
    has_frame = "frame" in pf.schema_arrow.names  # tables of octbatch < frames have none
    cols = ["path", "bytes", "mtime"] + (["status"] if with_status else []) + (["frame"] if has_frame else [])
    for batch in pf.iter_batches(batch_size=65536, columns=cols):
        paths = batch.column(0).to_pylist()
        sizes = batch.column(1).to_pylist()
        mtimes = batch.column(2).cast(pa.int64()).to_pylist()
        stats = batch.column(3).to_pylist() if with_status else [None] * len(paths)
        frames = batch.column("frame").to_pylist() if has_frame else [None] * len(paths)
        for p, s, m, st, fr in zip(paths, sizes, mtimes, stats, frames):
            yield row_key(p, fr, s, m), st


def _resolve_runtime(cfg: RunConfig):
    """(worker config, model info, backend, engine path) after engine checks."""
    from .model import load_model_info

    overrides = {
        k: v for k, v in dict(classes=cfg.classes, input_size=cfg.input_size, mean=cfg.mean, std=cfg.std).items() if v
    }
    backend = cfg.backend
    engine_path = None
    precision = None
    model_path = cfg.model
    if cfg.engine:
        from .engines import resolve_engine_for_run

        r = resolve_engine_for_run(cfg.engine, backend=backend, rebuild=cfg.rebuild_on_mismatch, model=cfg.model)
        backend, engine_path, precision, model_path = r.backend, r.engine_path, r.precision, r.model_path
    elif backend == "auto":
        backend = "onnxruntime"
    elif backend == "tensorrt":
        raise OctbatchError(
            "--backend tensorrt needs a built engine",
            "Run octbatch build-engine MODEL.onnx --backend tensorrt, then octbatch run --engine PATH.",
        )
    model = load_model_info(model_path, **overrides)
    return model, overrides, backend, engine_path, precision


def run(cfg: RunConfig, reporter: Reporter | None = None) -> RunSummary:
    """Classify every scan of cfg.archive into cfg.out. See the module docstring for the guarantees."""
    rep = reporter or NullReporter()
    t_start = time.perf_counter()
    archive = cfg.archive.rstrip("/") if is_url(cfg.archive) else os.path.abspath(cfg.archive)
    storage_options = parse_options(cfg.storage_options)
    configure_storage(storage_options)
    sl = parse_slice(cfg.shard)
    remote = None  # an s3:// --out: staged in a local folder, parts and table in the bucket
    if is_url(cfg.out):
        if sl is not None:
            raise OctbatchError(
                "--shard with an s3:// --out is not supported yet",
                "Run the slices with a shared-file-system --out, or run once without --shard.",
            )
        from .objstore_out import RemoteOut

        remote = RemoteOut(cfg.out)
        out = remote.stage(cfg.overwrite)
    elif "://" in cfg.out:
        raise OctbatchError(
            f"--out {cfg.out}: only s3:// URLs and file paths are supported", "Give s3://BUCKET/KEY.parquet or a path."
        )
    else:
        out = os.path.abspath(cfg.out)
    _check_paths(archive, out)
    model, overrides, backend, engine_path, precision = _resolve_runtime(cfg)
    run_id = uuid.uuid4().hex[:16]
    summary = RunSummary(
        out=out,
        archive=archive,
        run_id=run_id,
        model=model.path,
        model_sha256=model.sha256,
        backend=backend,
        executor=cfg.executor,
        slice=cfg.shard,
    )
    settings = model.settings_key
    gate_settings, gate_desc = _resolve_gate(cfg)
    summary.gate = cfg.gate
    state = {
        "settings": settings,
        "archive": archive,
        "include": list(cfg.include),
        "exclude": list(cfg.exclude),
        "limit": cfg.limit,
        "formats": list(cfg.formats),
        "max_volume_pixels": cfg.max_volume_pixels,
        "max_pixels": cfg.max_pixels,
        "gate": gate_desc,
    }
    rule = _volume_rule(cfg, model) if cfg.volumes else None

    with RunLock(out, shared=sl is not None, slice_=sl):
        wd = WorkDir(out)
        wd.clean_temps()
        use_previous = os.path.exists(out) and not cfg.overwrite
        if cfg.overwrite and sl is None:
            wd.remove()
        prev = wd.read_settings()
        if prev is not None and not cfg.overwrite:
            _check_same(prev, state, out, what="unfinished work in " + wd.path)
        if use_previous:
            try:
                md = read_metadata(out)
            except Exception:  # noqa: BLE001 - not Parquet at all
                md = {}
            if not md:
                raise OctbatchError(
                    f"output {out} exists and is not an octbatch result",
                    "Pass --overwrite to replace it, or choose another --out.",
                )
            _check_same(
                {
                    "settings": {k: md.get(k) for k in ("model_sha256", "classes", "preprocessing")},
                    "archive": md.get("archive_root"),
                    "gate": md.get("gate"),
                },
                state,
                out,
                what=out,
            )
        wd.write_settings(state)
        pseudo = resolve_pseudonymizer(cfg.phi, key_file=cfg.phi_key_file, work_dir=wd.path)
        if use_previous:
            _check_phi(md, pseudo, out)
        if remote:
            remote.save_settings()

        # What is already committed: the previous result (if kept) and every part file.
        committed: set[int] = set()
        retry: set[int] = set()
        sources = ([out] if use_previous else []) + wd.parts()
        for src in sources:
            for key, status in _keys_of(src):
                if status == "failed" or (cfg.retry_errors and status == "error"):
                    retry.add(key)
                else:
                    committed.add(key)
        committed -= retry

        threads = cfg.threads or default_threads()
        wcfg = _worker_config(
            cfg, model, overrides, backend, engine_path, precision, threads, run_id, archive, phi=pseudo.metadata()
        )
        if storage_options:
            wcfg = replace(wcfg, storage_options=storage_options)
        wcfg = replace(wcfg, gate=gate_settings, file_metadata={**wcfg.file_metadata, "gate": gate_desc})
        summary.decoder = _decoder_name(cfg.decoder)

        discovered: set[int] = set()
        counts = {"discovered": 0, "skipped": 0}

        def entries() -> Iterator[FileEntry]:
            it = _discover(archive, cfg, wd, pseudo)
            for e in it:
                if cfg.limit is not None and counts["discovered"] >= cfg.limit:
                    break
                counts["discovered"] += 1
                key = entry_row_key(e)
                discovered.add(key)
                if key in committed:
                    counts["skipped"] += 1
                    continue
                if not in_slice(e.path, sl):
                    continue
                yield e

        rep.start("classifying")
        _count_in_background(archive, cfg, wd, committed, sl, rep, pseudo)
        progress = {"files": 0, "errors": 0}

        def on_progress(n, e):
            progress["files"] += n
            progress["errors"] += e
            rep.advance(n, e)

        t_proc = time.perf_counter()
        executor = _make_executor(cfg)
        result = executor.run(
            make_shards(entries(), cfg.shard_size),
            wcfg,
            remote.parts_url if remote else wd.path,
            on_progress=on_progress,
        )
        if remote:
            remote.pull_parts()  # the parts the workers committed to the bucket, for the merge below
        rep.finish()
        proc_seconds = time.perf_counter() - t_proc
        summary.discovered = counts["discovered"]
        summary.skipped = counts["skipped"]
        summary.processed = sum(s.files for s in result.summaries)
        summary.ok = sum(s.ok for s in result.summaries)
        summary.errors = sum(s.errors for s in result.summaries)
        summary.suspect = sum(getattr(s, "suspect", 0) for s in result.summaries)
        summary.not_oct = sum(getattr(s, "not_oct", 0) for s in result.summaries)
        summary.workers = result.workers
        summary.worker_nodes = result.nodes
        summary.redone_shards = result.redone
        summary.startup_seconds = result.startup_seconds
        summary.precision = precision or model.precision
        summary.files_per_second = summary.processed / proc_seconds if proc_seconds > 0 and summary.processed else 0.0

        if result.failures:
            # Files of a shard that failed every attempt still get rows (status=failed), so the table
            # has no gaps; `failed` rows are retried automatically by the next run.
            _write_failed_parts(result.failures, wcfg, model, wd.path)
            summary.failed_shards = [
                {"shard": f.shard.id, "files": len(f.shard), "attempts": f.attempts, "error": f.error.splitlines()[0]}
                for f in result.failures
            ]
            summary.failed_files = sum(len(f.shard) for f in result.failures)

        if sl is not None:
            marker = {
                "slice": cfg.shard,
                "files": summary.processed,
                "failed_files": summary.failed_files,
                "run_id": run_id,
                "finished_at": time.time(),
                "settings": settings,
            }
            tmp = wd.slice_marker(*sl) + ".tmp-" + run_id
            with open(tmp, "w") as f:
                json.dump(marker, f)
            os.replace(tmp, wd.slice_marker(*sl))
        else:
            unchanged = (
                summary.processed == 0
                and not result.failures
                and not retry
                and counts["skipped"] == counts["discovered"]
            )
            summary.rows, summary.dropped_deleted = _merge_into(
                out,
                use_previous,
                wd,
                discovered,
                model,
                archive,
                rep,
                extra={"run_id": run_id, "phi": pseudo.metadata(), "gate": gate_desc},
                unchanged=unchanged,
            )
            summary.merged = True
            wd.clear_slice_markers()  # any finished slices are in `out` now
            if cfg.volumes:
                from .volumes import write_volumes

                summary.volumes = write_volumes(out, cfg.volumes, rule)
            if remote:
                remote.publish()
                summary.out = remote.url

    summary.seconds = time.perf_counter() - t_start
    if summary.failed_files:
        summary.exit_code = int(ExitCode.FAILED_SHARDS)
    elif summary.errors:
        summary.exit_code = int(ExitCode.UNREADABLE_FILES)
    return summary


def _decoder_name(choice: str) -> str:
    if choice == "auto":
        from .decode.dali import gpu_available

        return "dali" if gpu_available() else "cpu"
    return choice


def _resolve_gate(cfg: RunConfig):
    """(GateSettings, description stored with the results) for cfg; opening the gate file here turns a
    missing or broken gate into a user error before any worker starts."""
    from .gate import GateSettings, load_gate

    settings = GateSettings(cfg.gate, cfg.gate_model, cfg.gate_threshold)
    gate = load_gate(settings)
    if gate is None:
        return settings, {"mode": "off"}
    desc = {"mode": cfg.gate, **gate.describe()}
    gate.close()
    return settings, desc


def _check_same(prev: dict, now: dict, out: str, *, what: str) -> None:
    ps, ns = prev.get("settings") or {}, now["settings"]
    diffs = [k for k in ("model_sha256", "classes", "preprocessing") if ps.get(k) != ns.get(k)]
    if diffs:
        raise OctbatchError(
            f"{what} was made with a different model or preprocessing ({', '.join(diffs)} differ)",
            "Pass --overwrite to start over with this model, or use another --out.",
        )
    if prev.get("gate") and now.get("gate") and prev["gate"] != now["gate"]:
        raise OctbatchError(
            f"{what} was made with other OCT gate settings ({prev['gate'].get('mode')} -> {now['gate'].get('mode')}, or another gate file or threshold)",
            "Rerun with the same --gate/--gate-model/--gate-threshold, pass --overwrite to start over, or use another --out.",
        )
    if prev.get("archive") and prev.get("archive") != now["archive"]:
        raise OctbatchError(
            f"{what} holds results for the archive {prev.get('archive')}, not {now['archive']}",
            "Use another --out for this archive, or --overwrite to replace the results.",
        )


def _worker_config(
    cfg, model, overrides, backend, engine_path, precision, threads, run_id, archive, phi=None
) -> WorkerConfig:
    from .worker import WorkerConfig

    return WorkerConfig(
        model_path=model.path,
        model=model,
        model_overrides=overrides,
        backend=backend,
        engine_path=engine_path,
        precision=precision,
        decoder=cfg.decoder,
        device="auto",  # DALI decodes on the GPU when there is one
        batch_size=cfg.batch_size,
        decode_threads=threads,
        infer_threads=threads,
        max_pixels=cfg.max_pixels,
        run_id=run_id,
        file_metadata=file_metadata(
            model, archive_root=archive, version=__version__, extra={"phi": phi} if phi else None
        ),
        fault_hook=cfg.fault_hook,
    )


def _make_executor(cfg: RunConfig):
    from .executors import make_executor

    if cfg.executor == "ray":
        return make_executor(
            "ray",
            address=cfg.ray_address,
            workers=cfg.workers,
            gpus_per_worker=cfg.gpus_per_worker,
            max_shard_retries=cfg.max_shard_retries,
        )
    return make_executor(cfg.executor, max_shard_retries=cfg.max_shard_retries)


def _discover(
    archive: str, cfg, wd: WorkDir, pseudo, *, include=None, exclude=None, formats=None, max_volume_pixels=None
):
    """The run's entries: files (octbatch.archive) with volumes expanded into frames (octbatch.frames)."""
    exts, sniff = discovery_filters(cfg.formats if formats is None else formats)
    files = discover(
        archive,
        include=cfg.include if include is None else include,
        exclude=cfg.exclude if exclude is None else exclude,
        skip_dirs=[wd.path],
        extensions=exts,
        sniff=sniff,
    )
    return expand(
        files,
        pseudonymize=pseudo,
        max_pixels=cfg.max_pixels,
        max_volume_pixels=cfg.max_volume_pixels if max_volume_pixels is None else max_volume_pixels,
    )


def _check_phi(md: dict, pseudo, out: str) -> None:
    """Rows added to a table must pseudonymise patients as its existing rows do."""
    prev = md.get("phi")
    if not prev:
        return
    now = pseudo.metadata()
    if (prev.get("patient_id", "").startswith("kept")) != (now.get("patient_id", "").startswith("kept")) or prev.get(
        "key_fingerprint"
    ) != now.get("key_fingerprint"):
        raise OctbatchError(
            f"output {out} was written with other patient-ID settings (--phi / key fingerprint "
            f"{prev.get('key_fingerprint')} vs {now.get('key_fingerprint')})",
            "Use the same --phi and key as before, or --overwrite, or another --out.",
        )


def _volume_rule(cfg, model):
    from .volumes import VolumeRule

    return VolumeRule.from_options(
        model.classes, referral=cfg.referral, min_frames=cfg.volume_min_frames, min_prob=cfg.volume_min_prob
    )


def _count_in_background(archive, cfg, wd, committed, sl, rep, pseudo=None) -> None:
    """Count the pending files on a side thread so progress can show a total and an ETA at once.
    Only when progress is shown: the count walks the archive a second time."""
    if not getattr(rep, "wants_total", False):
        return

    def count():
        n = total = 0
        try:
            for e in _discover(archive, cfg, wd, pseudo or (lambda pid: None)):
                if cfg.limit is not None and total >= cfg.limit:
                    break
                total += 1
                if entry_row_key(e) not in committed and in_slice(e.path, sl):
                    n += 1
            rep.set_total(n)
        except Exception:  # noqa: BLE001 - progress only
            pass

    threading.Thread(target=count, name="octbatch-count", daemon=True).start()


def _write_failed_parts(failures, wcfg, model, parts_dir: str) -> None:
    import numpy as np

    from .results import ShardRows, rows_to_table, write_part

    schema = make_schema(model.classes, wcfg.file_metadata)
    for f in failures:
        rows = ShardRows(model.classes)
        msg = f"worker failed on this shard {f.attempts} times: {f.error.splitlines()[0][:400]}"
        rows.add(
            f.shard.entries,
            np.zeros((len(f.shard), len(model.classes)), np.float32),
            [None] * len(f.shard),
            [msg] * len(f.shard),
            int(time.time() * 1e6),
        )
        rows.cols["status"] = ["failed"] * len(f.shard)
        table = rows_to_table(
            rows,
            schema,
            model_sha256=model.sha256,
            backend=wcfg.backend,
            precision="",
            decoder=wcfg.decoder,
            run_id=wcfg.run_id,
        )
        write_part(table, parts_dir, f.shard.id)


def _merge_into(
    out: str,
    use_previous: bool,
    wd: WorkDir,
    discovered: set[int],
    model,
    archive: str,
    rep,
    extra: dict,
    unchanged: bool = False,
) -> tuple[int, int]:
    """Stream the previous result and the parts into a new out file; keep each discovered file once.

    Rows from parts win over rows of the previous result (they are newer). Returns (rows, dropped).
    """
    parts = wd.parts()
    schema = make_schema(model.classes, file_metadata(model, archive_root=archive, version=__version__, extra=extra))
    seen: set[int] = set()
    dropped = [0]

    def filtered(path: str) -> Iterator[pa.Table]:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=65536):
            t = _conform(pa.Table.from_batches([batch]), schema)
            keys = [
                row_key(p, fr, s, m)
                for p, fr, s, m in zip(
                    t.column("path").to_pylist(),
                    t.column("frame").to_pylist(),
                    t.column("bytes").to_pylist(),
                    t.column("mtime").cast(pa.int64()).to_pylist(),
                )
            ]
            mask = []
            for k in keys:
                keep = k in discovered and k not in seen
                if keep:
                    seen.add(k)
                elif k not in discovered:
                    dropped[0] += 1
                mask.append(keep)
            t = t.filter(pa.array(mask, pa.bool_()))
            for name in schema.names:  # a result written before a column existed (e.g. oct_score)
                if name not in t.column_names:
                    t = t.append_column(schema.field(name), pa.nulls(t.num_rows, schema.field(name).type))
            if t.num_rows:
                yield t.select(schema.names).cast(schema)

    def tables() -> Iterator[pa.Table]:
        for p in parts:
            yield from filtered(p)
        if use_previous:
            yield from filtered(out)

    if not parts and use_previous:
        # Nothing new: keep the file as it is unless files were deleted from the archive. Every
        # discovered key was found committed in `out`, whose keys are unique, so equal counts
        # mean equal sets.
        n = pq.ParquetFile(out).metadata.num_rows
        if n == len(discovered) and (unchanged or all(k in discovered for k, _ in _keys_of(out, with_status=False))):
            return n, 0
    rep.log(f"merging {len(parts)} part file(s){' and the previous result' if use_previous else ''} into {out}")
    rows = atomic_write_parquet(out, tables(), schema)
    for p in parts:
        try:
            os.unlink(p)
        except OSError:
            pass
    # Gone: the parts are in `out` now. Keep run.json so the next run knows the settings.
    return rows, dropped[0]


def merge(
    out: str, *, archive: str | None = None, reporter: Reporter | None = None, allow_missing: bool = False
) -> RunSummary:
    """Assemble the parts of `--shard i/N` runs (and any previous result) into one table.

    Refuses when a slice of the N is missing, or when a discovered file has no row, unless
    allow_missing is given.
    """
    rep = reporter or NullReporter()
    t0 = time.perf_counter()
    out = os.path.abspath(out)
    wd = WorkDir(out)
    state = wd.read_settings()
    if state is None:
        raise OctbatchError(
            f"no octbatch work folder at {wd.path}", "Run octbatch run ... --out OUT --shard i/N first (same --out)."
        )
    archive = archive or state.get("archive") or ""
    archive = archive.rstrip("/") if is_url(archive) else os.path.abspath(archive)
    done = wd.slices_done()
    ns = {n for (_, n) in done}
    if len(ns) > 1:
        raise OctbatchError(
            f"slices of different counts were run: {sorted(ns)}",
            "Use one N for every --shard i/N of a job, or --overwrite and rerun.",
        )
    missing = []
    if ns:
        n = ns.pop()
        missing = [i for i in range(n) if (i, n) not in done]
        if missing and not allow_missing:
            raise OctbatchError(
                f"slice(s) {', '.join(f'{i}/{n}' for i in missing)} of {n} have not finished",
                "Run octbatch run with --shard for each missing slice (same --out), then merge again.",
            )
    with RunLock(out):
        discovered: set[int] = set()
        from .config import RunConfig
        from .frames import DEFAULT_MAX_VOLUME_PIXELS

        mv = state.get("max_volume_pixels") or DEFAULT_MAX_VOLUME_PIXELS
        cfg = RunConfig(
            archive=archive, out=out, max_volume_pixels=mv, max_pixels=state.get("max_pixels") or 64_000_000
        )
        for e in _discover(
            archive,
            cfg,
            wd,
            lambda pid: None,
            include=state.get("include") or (),
            exclude=state.get("exclude") or (),
            formats=state.get("formats") or (),
        ):
            if state.get("limit") is not None and len(discovered) >= state["limit"]:
                break
            discovered.add(entry_row_key(e))
        have: set[int] = set()
        use_previous = os.path.exists(out)
        for src in ([out] if use_previous else []) + wd.parts():
            for k, _ in _keys_of(src, with_status=False):
                have.add(k)
        gaps = len(discovered - have)
        if gaps and not allow_missing:
            raise OctbatchError(
                f"{gaps} file(s) of the archive have no row yet (added or changed after the slices ran?)",
                "Run octbatch run again with the same --out (without --shard) to process them, or merge --allow-missing.",
            )
        # The model is needed only for the schema: read it from the parts' own metadata.
        md = read_metadata((wd.parts() or [out])[0])
        model = _SchemaModel(md)
        extra = {
            "merged_slices": len(done),
            **({"phi": md["phi"]} if md.get("phi") else {}),
            **({"gate": md["gate"]} if md.get("gate") else {}),
        }
        rows, dropped = _merge_into(out, use_previous, wd, discovered, model, archive, rep, extra=extra)
        wd.clear_slice_markers()
    s = RunSummary(
        out=out,
        archive=archive,
        run_id="merge",
        discovered=len(discovered),
        rows=rows,
        merged=True,
        dropped_deleted=dropped,
        seconds=time.perf_counter() - t0,
        model_sha256=model.sha256,
    )
    s.failed_files = gaps
    return s


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add the columns a table of an older octbatch lacks (e.g. frame, DICOM provenance) as nulls."""
    for f in schema:
        if f.name not in t.column_names:
            t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
    return t


class _SchemaModel:
    """Just enough of ModelInfo to rebuild the output schema from a part's metadata."""

    def __init__(self, md: dict):
        from .preprocess import Preprocessing

        self.classes = tuple(md.get("classes") or ())
        self.preprocessing = Preprocessing.from_json(json.dumps(md.get("preprocessing")))
        self.sha256 = md.get("model_sha256", "")
        self.path = md.get("model_path", "")
        self.card = md.get("model_card", "")
