"""`python -m octbatch.train_card`: engines/README.md rendered from metrics.json and the experiment files
(octbatch.training.readme_card; this module keeps the command and the import path).

    python -m octbatch.train_card engines/metrics.json --width benchmarks/width_experiment.json \
        --sizes benchmarks/model_sizes.json --out engines/README.md
"""

from __future__ import annotations

from .training.readme_card import main, render_card

__all__ = ["main", "render_card"]

if __name__ == "__main__":
    main()
