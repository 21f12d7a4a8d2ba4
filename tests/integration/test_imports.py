import json
import subprocess
import sys

HEAVY = [
    "onnxruntime",
    "torch",
    "torchvision",
    "ray",
    "nvidia.dali",
    "tensorrt",
    "cv2",
    "simplejpeg",
    "onnx",
    "obstore",
    "boto3",
]


def _loaded_after(code: str) -> list[str]:
    probe = f"""
import sys, json
{code}
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_octbatch_loads_no_heavy_library():
    assert _loaded_after("import octbatch") == []


def test_help_of_every_command_loads_no_heavy_library():
    code = """
from click.testing import CliRunner
from octbatch.cli import cli
r = CliRunner()
res = r.invoke(cli, ['--help'])
assert res.exit_code == 0, res.output
for name in cli.commands:
    res = r.invoke(cli, [name, '--help'])
    assert res.exit_code == 0, (name, res.output)
"""
    assert _loaded_after(code) == []
