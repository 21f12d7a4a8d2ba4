"""Configuration precedence: CLI option > OCTBATCH_* environment > TOML file > default."""

import json

from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.synth import make_archive


def _decoder_used(tmp_path, tiny_model, *args, env=None):
    res = CliRunner().invoke(
        cli,
        [
            *args,
            "run",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "r.parquet"),
            "--model",
            tiny_model,
            "--json",
            "-q",
            "--overwrite",
        ],
        env=env or {},
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["decoder"]


def test_precedence_cli_over_env_over_toml_over_default(tmp_path, tiny_model):
    make_archive(tmp_path / "a", 4, broken=False)
    toml = tmp_path / "octbatch.toml"
    toml.write_text('[run]\ndecoder = "pillow"\n')
    assert _decoder_used(tmp_path, tiny_model) == "cpu"  # default: auto -> the CPU decoder here
    assert _decoder_used(tmp_path, tiny_model, "--config", str(toml)) == "pillow"
    assert _decoder_used(tmp_path, tiny_model, env={"OCTBATCH_CONFIG": str(toml)}) == "pillow"
    assert _decoder_used(tmp_path, tiny_model, "--config", str(toml), env={"OCTBATCH_DECODER": "cpu"}) == "cpu"
    res = CliRunner().invoke(
        cli,
        [
            "--config",
            str(toml),
            "run",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "r.parquet"),
            "--model",
            tiny_model,
            "--json",
            "-q",
            "--overwrite",
            "--decoder",
            "cpu",
        ],
        env={"OCTBATCH_DECODER": "pillow"},
    )
    assert json.loads(res.stdout)["decoder"] == "cpu"


def test_bad_toml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    res = CliRunner().invoke(cli, ["--config", str(bad), "run", "--help"])
    assert res.exit_code == 2 and "not valid TOML" in res.output


def test_slice_option_its_former_name_envvars_and_toml_key(tmp_path, tiny_model):
    """--slice i/N; --shard (hidden) and $OCTBATCH_SHARD keep working for existing recipes."""
    make_archive(tmp_path / "a", 4, broken=False)
    toml = tmp_path / "octbatch.toml"
    toml.write_text('[run]\nslice = "1/3"\n')

    def slice_of(*extra, pre=(), env=None):
        args = [*pre, "run", str(tmp_path / "a"), "--out", str(tmp_path / "r.parquet"), "--model", tiny_model]
        res = CliRunner().invoke(cli, [*args, "--json", "-q", *extra], env=env or {})
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["slice"]

    assert slice_of("--slice", "0/2") == "0/2"
    assert slice_of("--shard", "1/2") == "1/2"
    assert slice_of(env={"OCTBATCH_SLICE": "2/4"}) == "2/4"
    assert slice_of(env={"OCTBATCH_SHARD": "3/4"}) == "3/4"
    assert slice_of(pre=("--config", str(toml))) == "1/3"
    assert slice_of() is None
    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--slice" in help_text and "--shard " not in help_text
