"""`run`: plan -> execute -> commit. Locate the archive and output, resolve the config, check the work
folder, plan what is left (octbatch.plan), hand its shards to an executor, and commit the parts into
one table (octbatch.merging).

Exactly once: a file's row is committed when its shard's part file is renamed into place. A rerun
with the same --out skips every committed (path, size, mtime), processes the rest, and merges the
previous result, the parts and nothing else into a new file that replaces the old one atomically.
Rows of files that no longer exist are dropped; rows of changed files (size or mtime) are redone.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ._version import __version__
from .config import ResolvedRun, RunConfig, resolve
from .errors import ExitCode
from .merging import merge, merge_into
from .phi import resolve_pseudonymizer
from .plan import Plan, Selection, plan
from .progress import NullReporter, Reporter
from .results import file_metadata, make_schema
from .shards import make_shards
from .summary import RunSummary
from .target import Target, locate
from .workdir import RunLock, WorkDir, check_phi, check_previous_table, check_same

if TYPE_CHECKING:
    from .executors import Executor, ExecutorResult
    from .worker import WorkerConfig

__all__ = ["run", "merge", "RunSummary", "Reporter", "NullReporter"]


# --- the settings a table is made with ----------------------------------------------------------
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


def _selection(cfg: RunConfig, archive: str) -> Selection:
    return Selection(
        archive=archive,
        include=cfg.include,
        exclude=cfg.exclude,
        formats=cfg.formats,
        limit=cfg.limit,
        max_pixels=cfg.max_pixels,
        max_volume_pixels=cfg.max_volume_pixels,
    )


def _state(cfg: RunConfig, rr: ResolvedRun, archive: str, gate_desc: dict) -> dict:
    """What run.json records: a later run (or merge) must match or repeat it."""
    return {
        "settings": rr.model.settings_key,
        "archive": archive,
        "include": list(cfg.include),
        "exclude": list(cfg.exclude),
        "limit": cfg.limit,
        "formats": list(cfg.formats),
        "max_volume_pixels": cfg.max_volume_pixels,
        "max_pixels": cfg.max_pixels,
        "gate": gate_desc,
    }


def _open_workdir(cfg: RunConfig, target: Target, state: dict):
    """Check the work folder and any previous table against `state`, record it; (use_previous, pseudo)."""
    out, wd = target.out, WorkDir(target.out)
    wd.clean_temps()
    use_previous = os.path.exists(out) and not cfg.overwrite
    if cfg.overwrite and cfg.slice is None:
        wd.remove()
    prev = wd.read_settings()
    if prev is not None and not cfg.overwrite:
        check_same(prev, state, out, what="unfinished work in " + wd.path)
    md = check_previous_table(out, state) if use_previous else {}
    wd.write_settings(state)
    pseudo = resolve_pseudonymizer(cfg.phi, key_file=cfg.phi_key_file, work_dir=wd.path)
    if target.remote and target.remote.save_settings():  # another slice put the table's key first: use it
        pseudo = resolve_pseudonymizer(cfg.phi, key_file=cfg.phi_key_file, work_dir=wd.path)
    if use_previous:
        check_phi(md, pseudo, out)
    return use_previous, pseudo


# --- execute ------------------------------------------------------------------------------------
def _worker_config(
    cfg: RunConfig, rr: ResolvedRun, run_id: str, archive: str, phi: dict, gate_settings, gate_desc: dict
) -> WorkerConfig:
    from .worker import WorkerConfig

    return WorkerConfig(
        model_path=rr.model.path,
        model=rr.model,
        model_overrides=rr.model_overrides,
        backend=rr.backend,
        engine_path=rr.engine_path,
        precision=rr.precision,
        decoder=cfg.decoder,  # each worker resolves `auto` on its own machine
        device="auto",  # DALI decodes on the GPU when there is one
        batch_size=cfg.batch_size,
        decode_threads=rr.threads,
        infer_threads=rr.threads,
        max_pixels=cfg.max_pixels,
        run_id=run_id,
        file_metadata=file_metadata(
            rr.model, archive_root=archive, version=__version__, extra={"phi": phi, "gate": gate_desc}
        ),
        storage_options=dict(cfg.storage_options),
        gate=gate_settings,
    )


def _make_executor(cfg: RunConfig, rr: ResolvedRun) -> Executor:
    from .executors import make_executor

    if rr.executor == "ray":
        return make_executor(
            "ray",
            address=cfg.ray_address,
            workers=cfg.workers,
            gpus_per_worker=cfg.gpus_per_worker,
            max_shard_retries=cfg.max_shard_retries,
        )
    return make_executor(rr.executor, max_shard_retries=cfg.max_shard_retries)


def _count_in_background(p: Plan, rep: Reporter) -> None:
    """Count the pending files on a side thread so progress can show a total and an ETA at once.
    Only when progress is shown: the count walks the archive a second time."""
    if not getattr(rep, "wants_total", False):
        return

    def count() -> None:
        try:
            rep.set_total(p.count_pending())
        except Exception:  # noqa: BLE001 - progress only
            pass

    threading.Thread(target=count, name="octbatch-count", daemon=True).start()


def execute(
    p: Plan, executor: Executor, wcfg: WorkerConfig, parts_dir: str, shard_size: int, rep: Reporter
) -> tuple[ExecutorResult, float]:
    """Hand the plan's pending entries, in shards, to the executor; (its result, seconds it took)."""
    rep.start("classifying")
    _count_in_background(p, rep)
    t0 = time.perf_counter()
    result = executor.run(make_shards(p.pending(), shard_size), wcfg, parts_dir, on_progress=rep.advance)
    return result, time.perf_counter() - t0


def _write_failed_parts(failures, wcfg: WorkerConfig, model, parts_dir: str) -> None:
    """Files of a shard that failed every attempt still get rows (status=failed), so the table has no
    gaps; `failed` rows are retried automatically by the next run."""
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


def _tally(s: RunSummary, p: Plan, result: ExecutorResult, rr: ResolvedRun, seconds: float) -> None:
    sums = result.summaries
    s.discovered, s.skipped = p.n_discovered, p.skipped
    s.processed = sum(x.files for x in sums)
    s.ok = sum(x.ok for x in sums)
    s.errors = sum(x.errors for x in sums)
    s.suspect = sum(getattr(x, "suspect", 0) for x in sums)
    s.not_oct = sum(getattr(x, "not_oct", 0) for x in sums)
    s.workers, s.worker_nodes, s.redone_shards = result.workers, result.nodes, result.redone
    s.startup_seconds = result.startup_seconds
    s.precision = rr.precision or rr.model.precision
    # What the workers used (each resolves `auto` on its own machine); the driver's guess if none ran.
    s.decoder = _used(sums, "decoder") or s.decoder
    s.backend = _used(sums, "backend") or s.backend
    s.files_per_second = s.processed / seconds if seconds > 0 and s.processed else 0.0
    s.failed_shards = [
        {"shard": f.shard.id, "files": len(f.shard), "attempts": f.attempts, "error": f.error.splitlines()[0]}
        for f in result.failures
    ]
    s.failed_files = sum(len(f.shard) for f in result.failures)


def _used(sums: list, what: str) -> str:
    """The decoder or backend names the workers reported, sorted and comma-joined ('' if none)."""
    return ",".join(sorted({getattr(x, what, "") for x in sums} - {""}))


# --- commit -------------------------------------------------------------------------------------
def _finish_slice(cfg: RunConfig, target: Target, s: RunSummary, settings: dict) -> None:
    """A --slice run commits its parts only; `octbatch merge` assembles the slices. With an s3://
    --out the slice's manifest goes to the bucket (its parts are there already)."""
    assert cfg.slice is not None
    wd = WorkDir(target.out)
    marker = {
        "slice": cfg.slice_text,
        "files": s.processed,
        "failed_files": s.failed_files,
        "run_id": s.run_id,
        "finished_at": time.time(),
        "settings": settings,
    }
    wd.write_slice_marker(*cfg.slice, marker, s.run_id)
    if target.remote:
        target.remote.save_slice_manifest(*cfg.slice, wd.slice_marker(*cfg.slice))
        s.out = target.remote.url


def commit(
    target: Target, p: Plan, use_previous: bool, s: RunSummary, extra: dict, rr: ResolvedRun, rep, volumes=None
) -> None:
    """Merge the previous table and the parts into the output; then the volumes table (`volumes`:
    (path, VolumeRule)) and the upload."""
    wd = WorkDir(target.out)
    schema = make_schema(
        rr.model.classes, file_metadata(rr.model, archive_root=target.archive, version=__version__, extra=extra)
    )
    unchanged = s.processed == 0 and not s.failed_shards and p.unchanged
    s.rows, s.dropped_deleted = merge_into(target.out, use_previous, wd, p.discovered, schema, rep, unchanged=unchanged)
    s.merged = True
    wd.clear_slice_markers()  # any finished slices are in `out` now
    if volumes:
        from .volumes import write_volumes

        s.volumes = write_volumes(target.out, *volumes)
    if target.remote:
        target.remote.publish()
        s.out = target.remote.url


# --- run ----------------------------------------------------------------------------------------
def run(cfg: RunConfig, reporter: Reporter | None = None, *, executor: Executor | None = None) -> RunSummary:
    """Classify every scan of cfg.archive into cfg.out. See the module docstring for the guarantees.
    `executor`: run the shards on this Executor instead of the one cfg names."""
    rep = reporter or NullReporter()
    t_start = time.perf_counter()
    target = locate(cfg)
    try:
        return _run(cfg, target, rep, executor, t_start)
    finally:
        target.close()


def _run(cfg: RunConfig, target: Target, rep: Reporter, executor: Executor | None, t_start: float) -> RunSummary:
    """run() once the output is located (and an s3:// --out locked and staged)."""
    rr = resolve(cfg)
    run_id = uuid.uuid4().hex[:16]
    s = RunSummary(
        out=target.out,
        archive=target.archive,
        run_id=run_id,
        model=rr.model.path,
        model_sha256=rr.model.sha256,
        backend=rr.backend,
        executor=rr.executor,
        slice=cfg.slice_text,
        decoder=rr.decoder,
        gate=cfg.gate,
        auto=list(rr.reasons),
    )
    for reason in rr.reasons:
        rep.log(reason)  # -v: what each `auto` picked and why
    gate_settings, gate_desc = _resolve_gate(cfg)
    state = _state(cfg, rr, target.archive, gate_desc)
    volumes = (cfg.volumes, _volume_rule(cfg, rr)) if cfg.volumes else None  # refused before any work

    with RunLock(target.out, shared=cfg.slice is not None, slice_=cfg.slice):
        use_previous, pseudo = _open_workdir(cfg, target, state)
        wd = WorkDir(target.out)
        sources = ([target.out] if use_previous else []) + wd.parts()
        todo = plan(
            _selection(cfg, target.archive),
            sources,
            skip_dir=wd.path,
            retry_errors=cfg.retry_errors,
            slice_=cfg.slice,
            pseudo=pseudo,
        )
        wcfg = _worker_config(cfg, rr, run_id, target.archive, pseudo.metadata(), gate_settings, gate_desc)
        result, seconds = execute(
            todo,
            executor if executor is not None else _make_executor(cfg, rr),
            wcfg,
            target.parts_dir,
            cfg.shard_size,
            rep,
        )
        if target.remote:
            target.remote.pull_parts()  # the parts the workers committed to the bucket, for the merge below
        rep.finish()
        _tally(s, todo, result, rr, seconds)
        if result.failures:  # a slice into s3:// commits them to the bucket; a full run merges them from here
            failed_dir = target.parts_dir if target.remote and cfg.slice is not None else wd.path
            _write_failed_parts(result.failures, wcfg, rr.model, failed_dir)
        if cfg.slice is not None:
            _finish_slice(cfg, target, s, state["settings"])
        else:
            extra = {"run_id": run_id, "phi": pseudo.metadata(), "gate": gate_desc}
            commit(target, todo, use_previous, s, extra, rr, rep, volumes)

    s.seconds = time.perf_counter() - t_start
    s.exit_code = int(ExitCode.FAILED_SHARDS if s.failed_files else ExitCode.UNREADABLE_FILES if s.errors else 0)
    return s


def _volume_rule(cfg: RunConfig, rr: ResolvedRun):
    from .volumes import VolumeRule

    return VolumeRule.from_options(
        rr.model.classes, referral=cfg.referral, min_frames=cfg.volume_min_frames, min_prob=cfg.volume_min_prob
    )
