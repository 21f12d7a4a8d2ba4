"""An ONNX classifier as a torch module: the graph's nodes run one by one with torch functional ops.

Written instead of depending on onnx2torch (last release 2024, an extra dependency with its own
torch pins) because octbatch's models are made of a handful of common ops: the shipped classifier
uses Conv, Relu, MaxPool, Add, Mul, ReduceMean and Gemm; the gate Constant, Sub, Flatten. The table
below covers those and the ops a typical exported CNN classifier uses besides (BatchNormalization,
pooling, activations, reshapes). A model with any other op is refused at load with the op's name.
Weights become buffers, so `.to(device, dtype)` and `channels_last` work as for any module, and the
forward pass has no host synchronisation for these ops (CUDA graphs can capture it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import OctbatchError

__all__ = ["OnnxModule", "load_onnx_module", "SUPPORTED_OPS", "unsupported_ops"]

Op = Callable[..., Any]


def _pads(attrs: dict, nd: int) -> tuple[list[int], list[int]]:
    p = list(attrs.get("pads", [0] * (2 * nd)))
    return p[:nd], p[nd:]


def _pad_input(F, x, begin: list[int], end: list[int], value: float = 0.0):
    """F.pad for ONNX's (begin..., end...) pads, last axis first as torch wants."""
    spec: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        spec += [b, e]
    return F.pad(x, spec, value=value)


def _check_auto_pad(attrs: dict, op: str) -> None:
    ap = attrs.get("auto_pad", "NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else ap
    if ap not in ("NOTSET", "VALID"):
        raise OctbatchError(
            f"{op} with auto_pad={ap} is not supported by the torch backend",
            "Use --backend onnxruntime, or re-export the model with explicit pads.",
        )


def _conv(F, attrs, x, w, b=None):
    _check_auto_pad(attrs, "Conv")
    nd = w.dim() - 2
    begin, end = _pads(attrs, nd)
    stride = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    groups = int(attrs.get("group", 1))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    if begin == end:
        return fn(x, w, b, stride, begin, dil, groups)
    return fn(_pad_input(F, x, begin, end), w, b, stride, 0, dil, groups)


def _pool(F, attrs, x, kind: str):
    _check_auto_pad(attrs, kind)
    k = attrs["kernel_shape"]
    nd = len(k)
    begin, end = _pads(attrs, nd)
    stride = attrs.get("strides", [1] * nd)
    ceil = bool(attrs.get("ceil_mode", 0))
    sym = begin == end and all(p <= kk // 2 for p, kk in zip(begin, k, strict=True))
    if kind == "MaxPool":
        dil = attrs.get("dilations", [1] * nd)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        if sym:
            return fn(x, k, stride, begin, dil, ceil_mode=ceil)
        return fn(_pad_input(F, x, begin, end, float("-inf")), k, stride, 0, dil, ceil_mode=ceil)
    include = bool(attrs.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if sym:
        return fn(x, k, stride, begin, ceil_mode=ceil, count_include_pad=include)
    if any(begin + end) and not include:
        raise OctbatchError(
            "AveragePool with asymmetric pads is not supported by the torch backend", "Use --backend onnxruntime."
        )
    return fn(_pad_input(F, x, begin, end), k, stride, 0, ceil_mode=ceil)


def _gemm(attrs, a, b, c=None):
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = (a @ b) * float(attrs.get("alpha", 1.0))
    if c is not None:
        y = y + c * float(attrs.get("beta", 1.0))
    return y


def _axes(attrs: dict, ins: list, i: int = 1) -> list[int] | None:
    """Axes from the attribute (older opsets) or the constant input `i` (newer ones)."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(ins) > i and ins[i] is not None:
        return [int(a) for a in ins[i].tolist()]
    return None


def _reduce(attrs, ins, fn_name: str):
    x = ins[0]
    axes = _axes(attrs, ins)
    keep = bool(attrs.get("keepdims", 1))
    if axes is None:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    if fn_name == "amax":
        return x.amax(dim=axes, keepdim=keep)
    return getattr(x, fn_name)(dim=axes, keepdim=keep)


def _flatten(attrs, x):
    axis = int(attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for s in x.shape[:axis]:
        lead *= s
    return x.reshape(lead, -1)


def _reshape(attrs, x, shape):
    dims = [int(s) for s in shape.tolist()]
    if not attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _batchnorm(F, attrs, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attrs.get("epsilon", 1e-5)))


def _clip(attrs, x, lo=None, hi=None):
    lo = attrs.get("min") if lo is None else lo
    hi = attrs.get("max") if hi is None else hi
    return x.clamp(min=lo, max=hi)


def _softmax(torch, attrs, x, log: bool, opset: int):
    axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
    if opset < 13:  # softmax over the flattened trailing axes
        shape = x.shape
        flat = x.reshape(*shape[:axis], -1)
        out = torch.log_softmax(flat, -1) if log else torch.softmax(flat, -1)
        return out.reshape(shape)
    return torch.log_softmax(x, axis) if log else torch.softmax(x, axis)


def _ops(torch) -> dict[str, Op]:
    """op type -> fn(attrs, *inputs) returning one tensor."""
    F = torch.nn.functional
    return {
        "Add": lambda a, x, y: x + y,
        "Sub": lambda a, x, y: x - y,
        "Mul": lambda a, x, y: x * y,
        "Div": lambda a, x, y: x / y,
        "Relu": lambda a, x: F.relu(x),
        "LeakyRelu": lambda a, x: F.leaky_relu(x, float(a.get("alpha", 0.01))),
        "Sigmoid": lambda a, x: torch.sigmoid(x),
        "Tanh": lambda a, x: torch.tanh(x),
        "HardSigmoid": lambda a, x: (x * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5))).clamp(0, 1),
        "HardSwish": lambda a, x: F.hardswish(x),
        "Clip": _clip,
        "Softmax": lambda a, x: _softmax(torch, a, x, False, a["_opset"]),
        "LogSoftmax": lambda a, x: _softmax(torch, a, x, True, a["_opset"]),
        "Conv": lambda a, *ins: _conv(F, a, *ins),
        "Gemm": _gemm,
        "MatMul": lambda a, x, y: x @ y,
        "MaxPool": lambda a, x: _pool(F, a, x, "MaxPool"),
        "AveragePool": lambda a, x: _pool(F, a, x, "AveragePool"),
        "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "ReduceMean": lambda a, *ins: _reduce(a, list(ins), "mean"),
        "ReduceSum": lambda a, *ins: _reduce(a, list(ins), "sum"),
        "ReduceMax": lambda a, *ins: _reduce(a, list(ins), "amax"),
        "BatchNormalization": lambda a, *ins: _batchnorm(F, a, *ins[:5]),
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Transpose": lambda a, x: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
        "Concat": lambda a, *xs: torch.cat(xs, dim=int(a["axis"])),
        "Squeeze": lambda a, *ins: ins[0].squeeze(_axes(a, list(ins))) if _axes(a, list(ins)) else ins[0].squeeze(),
        "Unsqueeze": lambda a, *ins: _unsqueeze(ins[0], _axes(a, list(ins)) or []),
        "Identity": lambda a, x: x,
        "Dropout": lambda a, *ins: ins[0],
    }


def _unsqueeze(x, axes: list[int]):
    rank = x.dim() + len(axes)
    for ax in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(ax)
    return x


# Op types the loader knows (Constant is folded at load).
SUPPORTED_OPS = (
    "Add Sub Mul Div Relu LeakyRelu Sigmoid Tanh HardSigmoid HardSwish Clip Softmax LogSoftmax Conv Gemm "
    "MatMul MaxPool AveragePool GlobalAveragePool GlobalMaxPool ReduceMean ReduceSum ReduceMax "
    "BatchNormalization Flatten Reshape Transpose Concat Squeeze Unsqueeze Identity Dropout Constant"
).split()


def unsupported_ops(graph) -> list[str]:
    """The op types of an ONNX graph the torch backend cannot run, in graph order, once each."""
    seen: list[str] = []
    for node in graph.node:
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if name not in SUPPORTED_OPS and name not in seen:
            seen.append(name)
    return seen


def _attrs(onnx, node, opset: int) -> dict:
    out: dict = {"_opset": opset}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _make_module(torch):
    class OnnxModule(torch.nn.Module):  # type: ignore[name-defined]
        """Runs the nodes of one ONNX graph; `forward(x)` returns its first output."""

        def __init__(self, nodes: list, consts: dict, input_name: str, output_name: str):
            super().__init__()
            self._nodes = nodes  # (op fn, input names, output name, attrs)
            self._names: dict[str, str] = {}
            # Integer constants (shapes, axes) stay on the host: reading them never syncs a device.
            self._host = {k: v for k, v in consts.items() if not v.is_floating_point()}
            for i, (name, value) in enumerate(consts.items()):
                if value.is_floating_point():
                    key = f"c{i}"
                    self._names[name] = key
                    self.register_buffer(key, value, persistent=False)
            self._input = input_name
            self._output = output_name

        def forward(self, x):
            env: dict = {self._input: x, **self._host}
            for name, key in self._names.items():
                env[name] = getattr(self, key)
            for fn, ins, out, attrs in self._nodes:
                env[out] = fn(attrs, *[env[i] if i else None for i in ins])
            return env[self._output]

    return OnnxModule


OnnxModule: Any = None  # the class, made on first load (torch is imported only then)


def _const_tensor(torch, onnx, arr: np.ndarray):
    dtype = np.float32 if arr.dtype.kind == "f" else arr.dtype
    return torch.from_numpy(np.array(arr, dtype=dtype, copy=True))


def load_onnx_module(path: str):
    """The ONNX classifier at `path` as a torch module (fp32, CPU, eval mode). Raises OctbatchError
    naming the first op the torch backend does not support."""
    from .._deps import require

    torch = require("torch", purpose="the torch backend")
    onnx = require("onnx", purpose="loading an ONNX model into torch")
    global OnnxModule
    if OnnxModule is None:
        OnnxModule = _make_module(torch)
    m = onnx.load(path)
    g = m.graph
    bad = unsupported_ops(g)
    if bad:
        raise OctbatchError(
            f"model {path}: op {bad[0]} is not supported by the torch backend"
            + (f" (nor {', '.join(bad[1:])})" if len(bad) > 1 else ""),
            "Use --backend onnxruntime (or tensorrt with a built engine).",
        )
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    table = _ops(torch)
    consts = {t.name: _const_tensor(torch, onnx, onnx.numpy_helper.to_array(t)) for t in g.initializer}
    nodes = []
    for node in g.node:
        attrs = _attrs(onnx, node, opset)
        if node.op_type == "Constant":
            consts[node.output[0]] = _const_tensor(torch, onnx, onnx.numpy_helper.to_array(attrs["value"]))
            continue
        nodes.append((table[node.op_type], list(node.input), node.output[0], attrs))
    inputs = [i.name for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) < 1:
        raise OctbatchError(
            f"model {path} has {len(inputs)} inputs", "octbatch runs classifiers with one input and one output."
        )
    return OnnxModule(nodes, consts, inputs[0], g.output[0].name).eval()
