"""octbatch.config: the parsers of CLI strings, RunConfig's typed fields, and resolve's choices."""

from __future__ import annotations

import pytest

from octbatch.config import (
    RunConfig,
    parse_classes,
    parse_floats,
    parse_input_size,
    parse_referral,
    parse_slice,
    parse_storage_options,
    resolve_executor,
    split_csv,
)
from octbatch.errors import OctbatchError


def _error(fn, *args) -> str:
    with pytest.raises(OctbatchError) as info:
        fn(*args)
    return str(info.value)


def test_split_csv_takes_repeats_and_commas():
    assert split_csv(("a,b", "c", "")) == ("a", "b", "c")
    assert split_csv(None) == ()


def test_classes_and_input_size():
    assert parse_classes(" CNV, DME ,,NORMAL") == ("CNV", "DME", "NORMAL")
    assert parse_classes("") is None and parse_classes(None) is None
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("256x224") == (256, 224)
    assert parse_input_size("256,224") == (256, 224)
    assert parse_input_size(None) is None
    assert _error(parse_input_size, "big") == "--input-size 'big' is not HxW. Use e.g. --input-size 224 or 224x224."


def test_floats():
    assert parse_floats("0.485, 0.456,0.406", "--mean") == (0.485, 0.456, 0.406)
    assert parse_floats(None, "--std") is None
    assert _error(parse_floats, "a,b", "--std").startswith("--std 'a,b' is not a list of numbers")
    assert _error(parse_floats, ",", "--mean").startswith("--mean is empty")


def test_slice():
    assert parse_slice("3/4") == (3, 4)
    assert parse_slice(None) is None
    assert _error(parse_slice, "x").startswith("--shard 'x' is not i/N")
    assert _error(parse_slice, "4/4").startswith("--shard 4/4: need 0 <= i < N")


def test_storage_options_and_referral():
    assert parse_storage_options(["Region=eu-west-1", "endpoint = http://h:9000"]) == (
        ("region", "eu-west-1"),
        ("endpoint", "http://h:9000"),
    )
    assert _error(parse_storage_options, ["nokey"]).startswith("--storage-option 'nokey' is not key=value")
    assert parse_referral(["CNV=urgent,DME= routine"]) == ("CNV=urgent", "DME=routine")
    assert _error(parse_referral, ["CNV=soon"]).startswith("--referral 'CNV=soon' is not CLASS=LEVEL")


def test_run_config_parses_the_string_forms_once():
    cfg = RunConfig(
        archive="a",
        out="r.parquet",
        classes="A,B",
        input_size="64x32",
        mean="0.5",
        std="0.25,0.5",
        slice="1/3",
        storage_options=("Region=x",),
        gpus_per_worker=-1.0,
    )
    assert cfg.classes == ("A", "B") and cfg.input_size == (64, 32)
    assert cfg.mean == (0.5,) and cfg.std == (0.25, 0.5)
    assert cfg.slice == (1, 3) and cfg.slice_text == "1/3"
    assert cfg.storage_options == (("region", "x"),)
    assert cfg.gpus_per_worker is None  # the former -1 sentinel means "not given"
    assert cfg.model_overrides == {"classes": ("A", "B"), "input_size": (64, 32), "mean": (0.5,), "std": (0.25, 0.5)}
    typed = RunConfig(archive="a", out="r.parquet", classes=("A", "B"), input_size=(64, 32), slice=(1, 3))
    assert typed.classes == cfg.classes and typed.input_size == cfg.input_size and typed.slice == cfg.slice
    assert RunConfig(archive="a", out="r", storage_options={"A": "b"}).storage_options == (("a", "b"),)


def test_run_config_refuses_bad_values_early():
    with pytest.raises(OctbatchError, match="--batch-size 0 is out of range"):
        RunConfig(archive="a", out="r", batch_size=0)
    with pytest.raises(OctbatchError, match="is not i/N"):
        RunConfig(archive="a", out="r", slice="1-of-2")
    with pytest.raises(OctbatchError, match="unknown --gate mode"):
        RunConfig(archive="a", out="r", gate="maybe")


def test_executor_switches_to_ray_when_ray_options_are_given():
    assert resolve_executor(RunConfig(archive="a", out="r")) == "local"
    assert resolve_executor(RunConfig(archive="a", out="r", workers=2)) == "ray"
    assert resolve_executor(RunConfig(archive="a", out="r", ray_address="auto")) == "ray"
    # as the CLI always did: --executor local with --workers runs on Ray
    assert resolve_executor(RunConfig(archive="a", out="r", executor="local", workers=2)) == "ray"
    assert resolve_executor(RunConfig(archive="a", out="r", executor="ray")) == "ray"
