"""Trained models as ONNX graphs or TorchScript modules, checked against the eager model.

Each task describes its export with an :class:`ExportSpec`: a module whose forward takes and
returns plain tensors, an example input, names, and which axes stay dynamic. The file is
written atomically with the task's metadata (class names, input size) inside it, then run
(onnxruntime or ``torch.jit.load``) on the example and on inputs of other sizes, and compared
with the eager outputs within :data:`TOLERANCE`.

Detection goes through torchvision's ONNX-compatible path (the TorchScript-based exporter,
for which torchvision registers its detection ops); its graph takes one image.

OpenVINO (the optional extra ``.[openvino]``) converts that same ONNX graph to its IR: an ``.xml``
graph with the metadata in its rt_info and a ``.bin`` of float32 weights beside it. Its int8 copy
is NNCF's post-training quantization of the convolutions and matrix products, or, for a graph with
If operations (detection), onnxruntime's int8 graph converted by OpenVINO.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from tasks.errors import UserError

T = TypeVar("T")
ONNX_OPSET = 17
TOLERANCE = dict(rtol=1e-3, atol=1e-4)  # README states these
EXPORT_FORMATS = ("onnx", "torchscript", "openvino")
QUANTIZABLE = ("onnx", "openvino")  # the formats --quantize int8 has a quantizer for
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "openvino": ".xml"}
FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript", "openvino": "an OpenVINO"}
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit", "openvino": "OpenVINO"}
METADATA_FILE = "metadata.json"  # TorchScript's extra file with the task's metadata
OPENVINO_METADATA = ["multitask_backbones", "metadata"]  # where an OpenVINO model's rt_info keeps the metadata
OPENVINO_INSTALL = "pip install 'multitask-backbones[openvino]'"
# What NNCF may quantize: the convolutions and matrix products, as onnxruntime's path does. With its defaults it
# also quantizes additions, products and comparisons; on the main job's detector (the one try in four that did not
# crash, see quantize_openvino_int8) that took COCO AP from 0.4645 to 0.2433.
OPENVINO_INT8_OPS = ("Convolution", "GroupConvolution", "MatMul")


@dataclass
class ExportSpec:
    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    check_inputs: list[tuple[Tensor, ...]] = field(default_factory=list)  # more inputs to compare on
    # Names of detection outputs (boxes, labels, scores): compared as sets of detections, since two
    # detections whose scores tie to float rounding may come out in either order.
    detections: tuple[str, str, str] | None = None


def _staged(path: Path, write: Callable[[str], None]) -> Path:
    """``write(staging_path)`` then rename into place, so a failed export leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return path


@contextlib.contextmanager
def _stdout_discarded() -> Iterator[None]:
    """Standard output discarded, at its file descriptor too: on an operator that ONNX lacks, torch's TorchScript
    exporter prints the whole traced graph there from C++ (thousands of lines before the one-line error; its
    logging switch, ``setup_onnx_logging``, tests a function for truth, not its result, so the log is always on)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _antialiased_resize(g: Any, x: Any, output_size: Any, align_corners: Any, scale_factors: Any) -> Any:
    """``F.interpolate(mode="bicubic", antialias=True)`` (timm's resize of a ViT's position embedding to the
    input's grid) as ONNX's Resize of opset 18, which has antialiasing: cubic with PIL's coefficient -0.5 and the
    weights of taps outside the input dropped and renormalised, which is torch's antialiased kernel (equal to
    float rounding, tests/test_export.py). Sizes may be dynamic."""
    from torch.onnx import symbolic_helper as helper

    def constant(values: list[Any], dtype: torch.dtype) -> Any:
        return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    empty = constant([], torch.float32)
    corners = "align_corners" if helper._maybe_get_const(align_corners, "b") else "half_pixel"
    options = dict(mode_s="cubic", cubic_coeff_a_f=-0.5, antialias_i=1, exclude_outside_i=1)
    if helper._is_none(output_size):  # scale factors instead of a size
        scales = constant([1.0, 1.0, *helper._maybe_get_const(scale_factors, "fs")], torch.float32)
        return g.op("Resize", x, empty, scales, coordinate_transformation_mode_s=corners, **options)
    if helper._is_packed_list(output_size):
        parts = [
            g.op("Unsqueeze", g.op("Cast", part, to_i=7), constant([0], torch.int64))  # 7: int64
            if helper._is_value(part)
            else constant([int(part)], torch.int64)
            for part in helper._unpack_list(output_size)
        ]
        height_width = g.op("Concat", *parts, axis_i=0)
    else:
        height_width = g.op("Cast", output_size, to_i=7)
    batch_channels = g.op("Slice", g.op("Shape", x), constant([0], torch.int64), constant([2], torch.int64))
    sizes = g.op("Concat", batch_channels, height_width, axis_i=0)
    return g.op("Resize", x, empty, empty, sizes, coordinate_transformation_mode_s=corners, **options)


# Operators that the TorchScript exporter has no ONNX form for at ONNX_OPSET, which a later opset has: the opset and
# this module's symbolic. A graph that needs one is written at that opset; every other graph stays at ONNX_OPSET.
LATER_OPSET_OPERATORS: dict[str, tuple[int, Callable[..., Any]]] = {
    "aten::_upsample_bicubic2d_aa": (18, _antialiased_resize),
}


def export_onnx(spec: ExportSpec, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``spec`` as an ONNX graph, with ``metadata`` as JSON strings in its metadata_props. The graph is at
    opset :data:`ONNX_OPSET`, or at the later one that an operator in :data:`LATER_OPSET_OPERATORS` needs."""
    import onnx

    def export(staging: str, opset: int) -> None:
        with warnings.catch_warnings(), _stdout_discarded():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            torch.onnx.export(
                spec.module.eval(),
                spec.example,
                staging,
                dynamo=False,
                opset_version=opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
            )

    def write(staging: str) -> None:
        opset = ONNX_OPSET
        while True:
            try:
                export(staging, opset)
                break
            except torch.onnx.errors.OnnxExporterError as error:  # an operator of the model that ONNX lacks
                later = [(name, *entry) for name, entry in LATER_OPSET_OPERATORS.items() if f"'{name}'" in str(error)]
                if not later or later[0][1] <= opset:
                    raise UserError(
                        "export: torch.onnx.export (under --format onnx and openvino) cannot take this model: "
                        f"{_first_line(error)}"
                    ) from None
                name, opset, symbolic = later[0]
                torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
        if metadata:
            graph = onnx.load(staging)
            for key, value in metadata.items():
                entry = graph.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            onnx.save(graph, staging)

    return _staged(path, write)


def export_torchscript(spec: ExportSpec, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Trace ``spec`` and save it with ``metadata`` as the extra file ``metadata.json``."""

    def write(staging: str) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(spec.module.eval(), spec.example, check_trace=False)
            torch.jit.save(traced, staging, _extra_files={METADATA_FILE: json.dumps(metadata or {})})

    return _staged(path, write)


def _openvino(what: str = "--format openvino") -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError(f"{what} needs the OpenVINO runtime, an optional extra: {OPENVINO_INSTALL}") from None
    return openvino


def _off_the_signal_thread(work: Callable[[], T]) -> T:
    """``work()`` run on a helper thread that blocks every signal, its result or error handed back.

    For OpenVINO's CPU plugin: when an ``ov.Core`` first compiles for the CPU, the plugin gives the calling thread
    an alternate signal stack of about 20 KB (strace: ``sigaltstack`` of 20,144 bytes from
    libopenvino_intel_cpu_plugin.so). CPython installs its signal handlers with SA_ONSTACK, so each later signal
    handled in Python (SIGCHLD of torch's DataLoader workers and of subprocesses, SIGINT) ran on that stack. On a
    CPU with AMX the signal frame carries the tile state, and the handler overflowed the stack: the process died
    of SIGSEGV (the full test suite, every time; core dumps in the dynamic linker, on that stack). On this
    thread the stack is the helper's, and with its signals blocked no signal is delivered there."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            outcome["value"] = work()
        except BaseException as error:  # re-raised on the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="openvino")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _save_openvino(model: Any, path: Path, metadata: dict[str, Any] | None) -> Path:
    """Save an OpenVINO model as ``path`` (.xml) and its weights beside it (.bin), float32, ``metadata`` as
    JSON in its rt_info. Both are written into a staging folder, then the .bin and last the .xml are renamed
    into place: a failed export leaves no partial file, and the .xml appears only beside a complete .bin."""
    ov = _openvino()
    _check_ir_path(path)
    model.set_rt_info(json.dumps(metadata or {}), OPENVINO_METADATA)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ov.save_model(model, str(staging / path.name), compress_to_fp16=False)
        os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _check_ir_path(path: Path) -> None:
    if path.suffix != ".xml":
        raise UserError(f"--output {path}: an OpenVINO model is an .xml file (its weights go to the .bin beside it)")


def _openvino_metadata(model: Any) -> dict[str, Any]:
    raw = model.get_rt_info(OPENVINO_METADATA).astype(str) if model.has_rt_info(OPENVINO_METADATA) else "{}"
    return json.loads(raw)


def export_openvino(spec: ExportSpec, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``spec`` as OpenVINO IR: the ONNX graph of :func:`export_onnx`, converted by ``openvino.convert_model``."""
    ov = _openvino()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        graph = export_onnx(spec, Path(folder) / "model.onnx")
        if _antialiased_resizes(graph):
            raise UserError(
                "export: OpenVINO ignores the antialiasing of ONNX's Resize, which this model's antialiased "
                "bicubic resize needs (a ViT's position embedding), so its IR would not match the model: use "
                "--format onnx or torchscript"
            )
        return _save_openvino(ov.convert_model(str(graph)), path, metadata)


def _antialiased_resizes(graph: Path) -> int:
    """How many Resize nodes of an ONNX file antialias. OpenVINO 2026.4 converts them as if they did not: a 14 x 14
    grid resized to 6 x 8 differs from onnxruntime's and torch's by 1.9 on values of unit spread."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    return sum(
        1
        for node in nodes
        if node.op_type == "Resize" and any(a.name == "antialias" and a.i == 1 for a in node.attribute)
    )


# _PHANTOM: where torchvision's detector keeps no detection, OpenVINO (2026.4, CPU) runs its converted graph to
# one detection of label 0 with a meaningless score (6.7e-44, 4.97) instead of none; onnxruntime runs the same
# ONNX file to none. torchvision's post-processing never emits label 0 (the background column is dropped before
# the scores are thresholded), so OpenVINO's rows of label 0 are dropped when it serves a detector.
DETECTION_OUTPUTS = ("boxes", "labels", "scores")


class Exported:
    """An exported file, ready to run: ``outputs = exported(*inputs)`` as numpy arrays, plus its metadata."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"exported model {path} does not exist")
        self.path = path
        self.format = {".onnx": "onnx", ".xml": "openvino"}.get(path.suffix, "torchscript")
        if self.format == "openvino":
            self._load_openvino(path)
        elif self.format == "onnx":
            import onnxruntime

            try:
                self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime raises its own types for unreadable files
                raise UserError(f"{path} is not a readable ONNX model: {_first_line(error)}") from None
            raw = self.session.get_modelmeta().custom_metadata_map
            self.metadata = {key: json.loads(value) for key, value in raw.items()}
            self.input_names = [i.name for i in self.session.get_inputs()]
        else:
            extra = {METADATA_FILE: ""}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.14
                    self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            except Exception as error:
                raise UserError(f"{path} is not a readable TorchScript model: {_first_line(error)}") from None
            self.metadata = json.loads(extra[METADATA_FILE] or "{}")

    def _load_openvino(self, path: Path) -> None:
        """Compiled for the CPU in float32 (OpenVINO would pick bfloat16 on CPUs with AMX, beyond the export
        tolerance) on this process's torch threads, so that it shares the cores as the rest of the run does."""
        ov = _openvino(f"serving {path}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError for unreadable or incomplete IR
            raise UserError(f"{path} is not a readable OpenVINO model: {_first_line(error)}") from None
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = _off_the_signal_thread(lambda: core.compile_model(model, "CPU", config))
        self.metadata = _openvino_metadata(model)
        self.input_names = [port.get_any_name() for port in model.inputs]
        names = [port.get_any_name() for port in model.outputs]
        self.detection_outputs = (
            [names.index(n) for n in DETECTION_OUTPUTS] if set(DETECTION_OUTPUTS) <= set(names) else []
        )

    def __call__(self, *inputs: Tensor) -> list[np.ndarray]:
        if self.format == "torchscript":
            with torch.inference_mode():
                out = self.module(*inputs)
            out = out if isinstance(out, (tuple, list)) else (out,)
            return [t.detach().cpu().numpy() for t in out]
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        if self.format == "onnx":
            return list(self.session.run(None, feed))
        result = self.compiled(feed)  # copies of the outputs, in the graph's output order
        out = [np.asarray(result[port]) for port in self.compiled.outputs]
        if self.detection_outputs:  # see _PHANTOM
            boxes, labels, scores = self.detection_outputs
            real = out[labels] != 0
            for index in (boxes, labels, scores):
                out[index] = out[index][real]
        return out

    def tensors(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """The outputs as CPU tensors, as the eager model would return them."""
        return tuple(torch.from_numpy(a) for a in self(*inputs))


def check_export(spec: ExportSpec, exported: Exported) -> float:
    """Run the exported file on the example and ``check_inputs`` and compare with the eager outputs;
    returns the largest absolute difference, raising :class:`UserError` beyond :data:`TOLERANCE`."""
    worst = 0.0
    for inputs in [spec.example, *spec.check_inputs]:
        with torch.inference_mode():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        wanted = {name: t.detach().cpu().numpy() for name, t in zip(spec.output_names, expected)}
        got = dict(zip(spec.output_names, exported(*inputs)))
        if spec.detections is not None:
            got.update(
                _match_detections(
                    exported.path,
                    [wanted[n] for n in spec.detections],
                    [got[n] for n in spec.detections],
                    spec.detections,
                )
            )
        for name, want in wanted.items():
            have = got[name]
            if want.shape != have.shape:
                raise UserError(f"exported {exported.path}: output {name} has shape {have.shape}, eager {want.shape}")
            if want.size == 0:
                continue
            difference = float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max())
            if not np.allclose(have, want, **TOLERANCE):  # type: ignore[arg-type]
                raise UserError(
                    f"exported {exported.path}: output {name} differs from the eager model by {difference:.2e} "
                    f"(tolerance rtol {TOLERANCE['rtol']}, atol {TOLERANCE['atol']})"
                )
            worst = max(worst, difference)
    return worst


def _match_detections(
    path: Path, want: list[np.ndarray], got: list[np.ndarray], names: tuple[str, str, str]
) -> dict[str, np.ndarray]:
    """The exported detections reordered to pair with the eager ones: each eager detection takes the
    unused exported detection of the same label with the nearest box and score."""
    (want_boxes, want_labels, want_scores), (boxes, labels, scores) = want, got
    if len(boxes) != len(want_boxes):
        raise UserError(f"exported {path}: {len(boxes)} detections, eager {len(want_boxes)}")
    order, used = [], np.zeros(len(boxes), bool)
    for box, label, score in zip(want_boxes, want_labels, want_scores):
        distance = np.abs(boxes - box).max(axis=1) + np.abs(scores - score) * 1e3
        distance[(labels != label) | used] = np.inf
        best = int(np.argmin(distance)) if len(distance) else 0
        if not np.isfinite(distance[best]):
            raise UserError(f"exported {path}: an eager detection of label {label} has no exported match")
        used[best] = True
        order.append(best)
    index = np.asarray(order, dtype=np.int64)
    return {names[0]: boxes[index], names[1]: labels[index], names[2]: scores[index]}


def export_and_check(spec: ExportSpec, fmt: str, target: Path, metadata: dict[str, Any]) -> str:
    """Export, check against eager, and describe the result in one line. The file is written and checked in a
    staging folder beside ``target`` and moved into place only when it passes (an OpenVINO .bin before its .xml),
    so a failed check leaves an earlier export at ``target`` as it was."""
    check_format(fmt)
    writers = {"onnx": export_onnx, "torchscript": export_torchscript, "openvino": export_openvino}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staged = staging / target.name
    try:
        writers[fmt](spec, staged, metadata)
        try:
            difference = check_export(spec, Exported(staged))
        except UserError as error:
            kept = f"{target} is left as it was" if target.exists() else f"{target} is not written"
            raise UserError(f"{str(error).replace(str(staged), str(target))}; {kept}") from None
        for written in sorted(staging.iterdir(), key=lambda path: path == staged):  # the named file last
            os.replace(written, target.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (
        f"wrote {target} ({file_mib(target):.1f} MiB), inputs {', '.join(spec.input_names)}, "
        f"outputs {', '.join(spec.output_names)}; {RUNTIMES[fmt]} matches eager within {difference:.1e} "
        f"on {1 + len(spec.check_inputs)} input(s)"
    )


def check_format(fmt: str, quantize: str | None = None) -> None:
    """``export --format`` (and ``--quantize``) checked before anything is loaded or written."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r} is not an export format: choose {', '.join(EXPORT_FORMATS)}")
    if quantize and fmt not in QUANTIZABLE:
        raise UserError(f"--quantize {quantize} needs --format {' or '.join(QUANTIZABLE)}")
    if fmt == "openvino":
        _openvino()


def file_mib(path: Path) -> float:
    """The size of an exported model: for OpenVINO the .xml graph and its .bin weights together."""
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size / 2**20


def serving_model(
    path: Path, load_eager: Callable[[Path], tuple[Callable[..., Any], dict[str, Any]]]
) -> tuple[Callable[..., tuple[Tensor, ...]], dict[str, Any]]:
    """What ``predict`` runs, and the metadata it needs (class names, sizes): an exported file through
    onnxruntime, OpenVINO or torch.jit, with no training code, or else a training checkpoint through ``load_eager``.
    Either way the model returns a tuple of tensors."""
    if is_exported(path):
        exported = Exported(path)
        return exported.tensors, exported.metadata
    model, meta = load_eager(path)

    def run_eager(*inputs: Tensor) -> tuple[Tensor, ...]:
        out = model(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return run_eager, meta


def quantize_int8(fp32: Path, target: Path, calibration: list[Tensor]) -> Path:
    """An int8 copy of the ONNX model ``fp32``: onnxruntime's static quantization (QDQ, per-channel
    weights, MinMax activation ranges) calibrated on ``calibration`` inputs. Only convolutions and
    matrix products are quantized; the detection ops (RoIAlign, NMS) stay in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = Exported(fp32).input_names[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.inputs, None)
            return None if item is None else {name: item.numpy()}

    def write(staging: str) -> None:
        prepared = f"{staging}.prep.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32), prepared, skip_symbolic_shape=True)
                quantize_static(
                    prepared,
                    staging,
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        finally:
            if os.path.exists(prepared):
                os.unlink(prepared)
        import onnx  # the metadata (class names, sizes) travels with the quantized copy

        source, graph = onnx.load(str(fp32)), onnx.load(staging)
        del graph.metadata_props[:]
        graph.metadata_props.extend(source.metadata_props)
        onnx.save(graph, staging)

    return _staged(target, write)


def quantize_openvino_int8(fp32: Path, target: Path, calibration: list[Tensor], spec: ExportSpec | None = None) -> Path:
    """An int8 copy of the OpenVINO model ``fp32``: NNCF's post-training quantization (its default preset:
    symmetric int8 weights per channel and int8 activations, ranges calibrated on ``calibration`` inputs) of the
    convolutions and matrix products only (:data:`OPENVINO_INT8_OPS`), metadata kept. A graph with If operations
    (detection) is quantized from ``spec``'s ONNX graph by onnxruntime instead, then converted (see below)."""
    ov = _openvino("--quantize int8 --format openvino")
    model = ov.Core().read_model(str(fp32))
    metadata = _openvino_metadata(model)
    if any(op.get_type_name() == "If" for op in model.get_ops()):
        # torchvision's detection graph holds If operations (its scripted box helpers). NNCF calibrates each If's
        # bodies on their own, and OpenVINO 2026.4 crashed (a segmentation fault) in that inference on the main
        # job's detector, 3 times in 4. Such a graph is quantized as the ONNX path does it (onnxruntime's QDQ, the
        # same operations) and converted by OpenVINO's ONNX front end, which runs the QDQ pairs in int8.
        if spec is None:
            raise UserError(f"{fp32}: a graph with If operations is quantized from its ONNX export; pass its spec")
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as folder:
            qdq = quantize_int8(export_onnx(spec, Path(folder) / "m.onnx"), Path(folder) / "m.int8.onnx", calibration)
            return _save_openvino(ov.convert_model(str(qdq)), target, metadata)
    try:
        with _logger_level("torch.utils.cpp_extension", logging.ERROR):  # NNCF imports it: it warns of no CUDA
            import nncf
    except ImportError:
        raise UserError(
            f"--quantize int8 --format openvino needs NNCF, in the same extra: {OPENVINO_INSTALL}"
        ) from None
    dataset = nncf.Dataset(calibration, lambda x: x.numpy())
    others = sorted({op.get_type_name() for op in model.get_ops()} - set(OPENVINO_INT8_OPS))
    try:
        # NNCF's progress bars and INFO lines would interleave with the command's own report
        with _logger_level("nncf", logging.WARNING), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                ignored = nncf.IgnoredScope(types=others, validate=False)
                quantized = _off_the_signal_thread(  # NNCF compiles the model for its calibration
                    lambda: nncf.quantize(model, dataset, subset_size=len(calibration), ignored_scope=ignored)
                )
    except Exception as error:  # NNCF raises its own types for graphs it cannot handle
        raise UserError(f"NNCF could not quantize {fp32}: {_first_line(error)}") from None
    return _save_openvino(quantized, target, metadata)


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """The logger ``name`` at ``level`` for the block, then back at its own."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def quantize_and_report(
    fp32: Path,
    calibration: list[Tensor],
    evaluate: Callable[[Exported], float],
    metric: str,
    spec: ExportSpec | None = None,
) -> str:
    """Quantize ``fp32`` (ONNX or OpenVINO) to int8 beside it, then compare the two: file size, seconds per
    input in its runtime on the first calibration input, and the task's main metric from ``evaluate``."""
    openvino = fp32.suffix == ".xml"
    int8 = fp32.with_name(f"{fp32.stem}.int8{fp32.suffix}")
    if openvino:
        quantize_openvino_int8(fp32, int8, calibration, spec)
    else:
        quantize_int8(fp32, int8, calibration)
    rows, values, speed = [], {}, {}
    for name, path in (("float32", fp32), ("int8", int8)):
        model = Exported(path)
        speed[name] = time_call(lambda m=model: m(*calibration[:1]))  # type: ignore[misc]
        values[name] = evaluate(model)
        rows.append(
            f"  {name:<8} {file_mib(path):7.1f} MiB  {speed[name] * 1000:8.1f} ms/input "
            f"({speed['float32'] / speed[name]:.2f}x)  {metric} {values[name]:.4f}"
        )
    change = values["int8"] - values["float32"]
    runtime = RUNTIMES["openvino" if openvino else "onnx"]
    return "\n".join([f"wrote {int8} ({runtime}, CPU)", *rows, f"  {metric} change with int8: {change:+.4f}"])


def calibration_inputs(dataset: Any, count: int, make: Callable[[dict[str, Any]], Tensor]) -> list[Tensor]:
    """Up to ``count`` model inputs from readable items spread evenly over ``dataset``, for calibration.

    Evenly spaced, not the first ``count``: an ImageFolder lists its images class by class, and the first 16 of
    them were one class, whose activation ranges then stood for all (a trained colour classifier's int8 logits
    differed from float32 by 38-52% of their norm). An unreadable item is replaced by the next readable one."""
    total = len(dataset)
    starts = sorted({index * total // count for index in range(count)}) if count > 0 else []
    inputs: list[Tensor] = []
    taken: set[int] = set()
    for start in starts:
        index = start
        while index < total and (index in taken or dataset[index] is None):
            index += 1
        if index < total:
            taken.add(index)
            inputs.append(make(dataset[index]))
    if not inputs:
        raise UserError("--quantize found no readable images to calibrate on")
    return inputs


def format_of(output: str | None) -> str | None:
    """The export format that ``--output``'s file name asks for, if it names one."""
    name = Path(output).name if output else ""
    return next((fmt for fmt, suffix in SUFFIXES.items() if name.endswith(suffix) and name != suffix), None)


def default_target(checkpoint: Path, fmt: str, output: str | None) -> Path:
    """Where ``export`` writes: ``--output`` as given, or a file named after the checkpoint in the folder that
    ``--output`` names (or beside the checkpoint). The name must end as ``fmt``'s files do, since ``predict`` and
    ``eval`` tell an exported model's format by that; checked before anything is written."""
    name = checkpoint.with_suffix(SUFFIXES[fmt]).name
    if not output:
        return checkpoint.with_name(name)
    target = Path(output)
    if target.is_dir() or output.endswith(("/", os.sep)):
        return target / name
    if fmt == "openvino":
        _check_ir_path(target)
    if not target.name.endswith(SUFFIXES[fmt]) or target.name == SUFFIXES[fmt]:
        raise UserError(
            f"--output {output}: {FORMAT_NAMES[fmt]} model is a {SUFFIXES[fmt]} file (name one, or a folder to write "
            "it in)"
        )
    return target


def is_exported(path: Path) -> bool:
    """An exported file (served without the training code) rather than a training checkpoint."""
    return path.suffix in (".onnx", ".xml") or path.name.endswith(".torchscript.pt")


def time_call(call: Callable[[], object], rounds: int = 5) -> float:
    """Median seconds of ``call`` after one warm-up call."""
    call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
