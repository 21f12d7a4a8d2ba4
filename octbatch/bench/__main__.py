"""Child processes of `octbatch bench`: python -m octbatch.bench --child SPEC.json (internal)."""

import sys

from .children import run_child

if len(sys.argv) == 3 and sys.argv[1] == "--child":
    run_child(sys.argv[2])
else:
    sys.exit("usage: python -m octbatch.bench --child SPEC.json (internal; use `octbatch bench`)")
