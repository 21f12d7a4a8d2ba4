"""`octbatch bench`: stage ceilings, `octbatch run` end to end, baselines side by side, scale.

How it measures (MLPerf-offline style care, on the user's own machine and archive):
- every measurement has a warm-up, then `repeats` timed runs of at least `min_seconds` each; rows keep
  the median and the spread (min/max and quartiles), never a single best run (measure.py: the one timer);
- stage ceilings run in this process on data already in the page cache, so each stage is measured
  alone; inference runs on pre-decoded tensors (stages.py);
- end-to-end runs and baselines each run in their own child process (`python -m octbatch.bench
  --child SPEC`), so peak RSS per configuration is measured per child (children.py, e2e.py,
  baselines.py) and one method's threads, caches or Ray processes never leak into the next one's numbers;
- every row carries the machine and the library versions (octbatch.machine).

Modules: config (BenchConfig), measure (timer, rows), archives (what is measured on), stages, children,
e2e, baselines, scale, derive (ceilings and ratios), render (Markdown, charts), run (run_bench).
"""

from __future__ import annotations

from ..machine import TreeRssSampler, library_versions, machine_facts
from .archives import image_files, link_archive, prepare_archive, real_data_dir
from .children import run_child
from .config import BASELINES, BenchConfig, quick_overrides
from .measure import combined_ceiling, efficiency, measure_rate, repeat_timed, summarize
from .run import run_bench

__all__ = [
    "BASELINES",
    "BenchConfig",
    "TreeRssSampler",
    "combined_ceiling",
    "efficiency",
    "image_files",
    "library_versions",
    "link_archive",
    "machine_facts",
    "measure_rate",
    "prepare_archive",
    "quick_overrides",
    "real_data_dir",
    "repeat_timed",
    "run_bench",
    "run_child",
    "summarize",
]
