"""octbatch.merging: the public `merge` name, and the schema a merge rebuilds from a table's metadata."""

from __future__ import annotations

import json


def test_public_merge_is_the_function_once_the_modules_are_imported():
    import octbatch
    import octbatch.merging
    import octbatch.pipeline
    from octbatch import merge

    assert merge is octbatch.merging.merge is octbatch.pipeline.merge
    assert octbatch.merge is merge


def test_schema_from_metadata_matches_a_runs_schema():
    from octbatch.preprocess import Preprocessing
    from octbatch.results import file_metadata, make_schema, schema_from_metadata

    class Model:
        classes = ("CNV", "NORMAL")
        preprocessing = Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.25,))
        sha256 = "abc"
        path = "/models/m.onnx"
        card = "card"

    md = file_metadata(Model, archive_root="/a", version="0", extra={"gate": {"mode": "off"}})
    want = make_schema(Model.classes, md)
    got, sha = schema_from_metadata(md, archive_root="/a", version="0", extra={"gate": {"mode": "off"}})
    assert sha == "abc" and got.names == want.names and got.types == want.types
    got_md, want_md = (json.loads(s.metadata[b"octbatch"]) for s in (got, want))
    got_md.pop("written_at"), want_md.pop("written_at")
    assert got_md == want_md
