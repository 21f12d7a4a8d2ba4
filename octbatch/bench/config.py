"""What `octbatch bench` measures: a frozen BenchConfig, and the --quick variant of one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["BASELINES", "BenchConfig", "quick_overrides", "with_torch_path"]

BASELINES = ("naive", "dataloader", "ray_data")


@dataclass(frozen=True)
class BenchConfig:
    out: str
    archive: str | None = None
    synthetic: int | None = None
    files: int = 2000
    model: str | None = None
    engine: str | None = None
    backends: tuple[str, ...] = ("onnxruntime",)
    decoders: tuple[str, ...] = ("cpu", "pillow")
    batch_sizes: tuple[int, ...] = (16, 64, 128)
    executors: tuple[str, ...] = ("local",)
    baselines: tuple[str, ...] = BASELINES
    min_seconds: float = 2.0
    repeats: int = 3
    warmup: int = 1
    threads: int = 0
    run_batch_size: int = 64
    scale: tuple[int, ...] = ()
    scale_e2e_max: int = 10000
    scale_dir: str | None = None
    charts: bool = True
    quick: bool = False
    # the torch GPU path (issue 14): nvjpeg decode-only, torch inference-only and an end-to-end
    # `octbatch run (nvjpeg+torch)` row; on the GPU when torch sees CUDA, else their CPU twins.
    # None: when torch and torchvision are installed (and not --quick).
    torch_path: bool | None = None
    # experiments: {"patches": {name: "split:D,I"}} adds `octbatch run (name)` rows (decode/inference thread split)
    extra: dict = field(default_factory=dict)

    @property
    def timing(self) -> dict:
        """The keyword arguments of measure_rate for this configuration."""
        return dict(min_seconds=self.min_seconds, repeats=self.repeats, warmup=self.warmup)


def quick_overrides(cfg: BenchConfig) -> BenchConfig:
    """--quick: a smoke check in well under a minute (small synthetic archive, one short repeat)."""
    return replace(
        cfg,
        synthetic=cfg.synthetic or (None if cfg.archive else 150),
        files=min(cfg.files, 150) if cfg.archive else cfg.files,
        min_seconds=min(cfg.min_seconds, 0.2),
        repeats=1,
        warmup=1,
        batch_sizes=tuple(sorted(set(cfg.batch_sizes) & {cfg.run_batch_size})) or (cfg.run_batch_size,),
        decoders=tuple(d for d in cfg.decoders if d != "dali")[:2] or ("cpu",),
        baselines=tuple(b for b in cfg.baselines if b == "naive"),
        scale=cfg.scale or (1000,),
        scale_e2e_max=0,
        torch_path=bool(cfg.torch_path),
    )


def with_torch_path(cfg: BenchConfig) -> BenchConfig:
    """cfg with the nvjpeg decoder and the torch backend added when its torch_path is on (None: when
    torch and torchvision can be found; nothing is imported to find out)."""
    on = cfg.torch_path
    if on is None:
        from ..choice import installed

        on = installed("torch") and installed("torchvision")
    if not on:
        return replace(cfg, torch_path=False)
    decoders = cfg.decoders if "nvjpeg" in cfg.decoders else (*cfg.decoders, "nvjpeg")
    backends = cfg.backends if "torch" in cfg.backends else (*cfg.backends, "torch")
    return replace(cfg, torch_path=True, decoders=decoders, backends=backends)
