"""RunSummary: what one `octbatch run` or `octbatch merge` did (the CLI prints it; --json dumps it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["RunSummary"]


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
    rows: int | None = None  # rows in the output file (None when not merged: --slice)
    merged: bool = False
    slice: str | None = None
    seconds: float = 0.0
    startup_seconds: float = 0.0
    files_per_second: float = 0.0
    backend: str = ""
    precision: str = ""
    decoder: str = ""
    auto: list = field(default_factory=list)  # what each `auto` (--decoder, --backend) picked and why
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
