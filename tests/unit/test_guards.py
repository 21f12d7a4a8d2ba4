"""The unit layer's guards hold: no sleeping, no subprocesses, no Ray."""

import subprocess
import time

import pytest


def test_sleep_is_refused():
    with pytest.raises(AssertionError, match="time.sleep is not allowed in a unit test"):
        time.sleep(0.01)


def test_subprocess_is_refused():
    with pytest.raises(AssertionError, match="subprocess.run is not allowed in a unit test"):
        subprocess.run(["true"])
    with pytest.raises(AssertionError, match="subprocess.Popen is not allowed in a unit test"):
        subprocess.Popen(["true"])


def test_ray_is_refused():
    import ray

    with pytest.raises(AssertionError, match="Ray is not allowed in a unit test|ray.init is not allowed"):
        ray.init()
