"""backends.base: one output contract (Runner._postprocess) for host and device inputs; the name registry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from octbatch.backends import registry
from octbatch.backends.base import Runner, softmax
from octbatch.errors import OctbatchError


class Echo(Runner):
    """A runner whose model output is whatever the test hands it."""

    name = "echo"

    def __init__(self, output_kind: str, out: np.ndarray):
        super().__init__(SimpleNamespace(output_kind=output_kind, classes=("A", "B")))
        self.out = out

    def _load(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.out


LOGITS = np.array([[2.0, -1.0], [0.5, 0.5]])
PROBS = np.array([[0.9, 0.1], [0.25, 0.75]])


@pytest.mark.parametrize(
    "kind,out,want",
    [
        ("logits", LOGITS, softmax(LOGITS.astype(np.float32))),
        ("auto", LOGITS, softmax(LOGITS.astype(np.float32))),
        ("auto", PROBS, PROBS),
        ("probs", PROBS, PROBS),
    ],
)
def test_host_and_device_outputs_get_the_same_postprocessing(kind, out, want):
    r = Echo(kind, out)
    host = r.infer(np.zeros((2, 1, 8, 8), np.float32))
    device = r._postprocess(out, 2)  # what TensorRTRunner.infer_device returns through
    assert host.dtype == device.dtype == np.float32
    assert np.allclose(host, want, atol=1e-6) and np.allclose(device, want, atol=1e-6)


def test_an_output_of_the_wrong_shape_is_refused():
    with pytest.raises(RuntimeError, match=r"echo: model returned shape \(3, 2\) for a batch of 2"):
        Echo("logits", np.zeros((3, 2))).infer(np.zeros((2, 1, 8, 8), np.float32))


def test_one_registry_of_names():
    assert registry.BACKEND_CHOICES == ("auto", *registry.BACKENDS)
    assert registry.PRECISION_CHOICES == (*registry.PRECISIONS, "best")
    with pytest.raises(OctbatchError, match="unknown backend 'cuda'. Use one of onnxruntime, tensorrt."):
        registry.make_runner("cuda", None)
