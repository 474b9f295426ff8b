"""Trained models as ONNX graphs, checked against the eager model in onnxruntime.

Each task describes its export with an :class:`ExportSpec`: a module whose forward takes and
returns plain tensors, an example input, names, and which axes stay dynamic. The ONNX file
is written atomically, then run in onnxruntime on the example and on a second input of
another size, and compared with the eager outputs within :data:`TOLERANCE`.

Detection goes through torchvision's ONNX-compatible path (the TorchScript-based exporter,
which torchvision's detection ops register symbolic functions for); its graph takes one image.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tasks.errors import UserError

ONNX_OPSET = 17
TOLERANCE = dict(rtol=1e-3, atol=1e-4)  # README states these


@dataclass
class ExportSpec:
    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    check_inputs: list[tuple[Tensor, ...]] = field(default_factory=list)  # more inputs to compare on


def export_onnx(spec: ExportSpec, path: Path) -> Path:
    """Write ``spec`` as an ONNX graph to ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            torch.onnx.export(
                spec.module.eval(),
                spec.example,
                staging,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
            )
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return path


def onnx_session(path: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a readable ONNX model: {first[:200]}") from None


def run_onnx(session, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)})


def check_onnx(spec: ExportSpec, path: Path) -> float:
    """Run the exported graph on the example (and ``check_inputs``) and compare with eager outputs;
    returns the largest absolute difference, raising :class:`UserError` beyond :data:`TOLERANCE`."""
    session = onnx_session(path)
    worst = 0.0
    for inputs in [spec.example, *spec.check_inputs]:
        with torch.inference_mode():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = run_onnx(session, inputs)
        for name, want, have in zip(spec.output_names, expected, got):
            want = want.detach().cpu().numpy()
            if want.shape != have.shape:
                raise UserError(f"exported {path}: output {name} has shape {have.shape}, eager {want.shape}")
            if want.size == 0:
                continue
            difference = float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max())
            if not np.allclose(have, want, **TOLERANCE):  # type: ignore[arg-type]
                raise UserError(
                    f"exported {path}: output {name} differs from the eager model by {difference:.2e} "
                    f"(tolerance rtol {TOLERANCE['rtol']}, atol {TOLERANCE['atol']})"
                )
            worst = max(worst, difference)
    return worst
