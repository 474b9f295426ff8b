"""A faster inference form of any traceable backbone: BatchNorm folded, channels-last, TorchScript-frozen."""

from __future__ import annotations

import warnings

import torch
import torch.fx
from torch import Tensor
from torch.fx.experimental.optimization import fuse

from backbones.base import Backbone, first_conv_in_channels


class InferenceBackbone(Backbone):
    """An eval-only copy of a backbone with the same outputs (to float rounding) and ``feature_info``.

    Each BatchNorm that follows a convolution is folded into the convolution (torch.fx's
    ``fuse``); weights and inputs use the channels-last layout that oneDNN and cuDNN
    convolutions prefer; and with ``freeze`` the graph is traced, frozen and passed through
    ``torch.jit.optimize_for_inference``, which fuses convolutions with their ReLU and residual
    additions. On 2 cores of an AVX-512 CPU this runs ResNet-50 1.24-1.34× faster than torchvision's
    eager model, with less than half its activation memory (docs/benchmarks.md; the range is two hosts,
    docs/results.md). Training it is an error:
    folded statistics are no longer statistics.

    Args:
        backbone: the backbone to copy; it is left unchanged.
        channels_last: use the channels-last memory layout.
        freeze: trace and freeze with TorchScript. Tracing records no shape-dependent control
            flow in our backbones, so the frozen graph serves any input size.
        compile: instead of TorchScript, ``torch.compile`` (Inductor) with weight freezing, the
            weights folded into the generated code as constants, and the C++ wrapper. Faster than the TorchScript
            graph once compiled (docs/benchmarks.md), but it compiles for each new input shape
            (seconds on a CPU), so it suits a server with fixed input sizes; the task runners'
            eval and predict, whose shapes vary, keep TorchScript. Outputs run without autograd.
    """

    def __init__(
        self, backbone: Backbone, *, channels_last: bool = True, freeze: bool = True, compile: bool = False
    ) -> None:
        super().__init__()
        self.feature_info = backbone.feature_info
        was_training = backbone.training
        graph: torch.nn.Module = fuse(backbone.eval())
        backbone.train(was_training)
        self.channels_last = channels_last
        if channels_last:
            graph = graph.to(memory_format=torch.channels_last)
        self.compiled = compile
        if compile:
            # compiled at the first call of each input shape, under Inductor's freezing (see forward): 1.29x
            # torchvision's eager resnet50 in docs/benchmarks.md (AVX-512, Zen 4), 1.43x on a faster AVX-512 host
            # before the C++ wrapper, 1.45-1.47x with it on an AVX2 CPU (docs/results.md)
            graph = torch.compile(graph, dynamic=False)  # type: ignore[assignment]
        elif freeze:
            graph = self._torchscript(graph)
        self.graph = graph
        self.frozen = isinstance(graph, torch.jit.ScriptModule)  # False: folded and channels-last, eager
        self.training = False

    def _torchscript(self, graph: torch.nn.Module) -> torch.nn.Module:
        """TorchScript-freeze ``graph``, or return it unchanged where TorchScript cannot.

        torch 2.14 marks TorchScript deprecated in favour of torch.compile. Inductor with freezing
        runs faster (1.29x torchvision's eager resnet50 against 1.24x, docs/benchmarks.md), but it
        compiles once per input shape (7-14 s on 2 cores), and eval and predict see many shapes;
        so TorchScript stays the default while it exists, and ``compile=True`` is for fixed sizes.
        """
        param = next(graph.parameters())
        example = self._layout(torch.zeros(1, first_conv_in_channels(graph), 64, 64, device=param.device))
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(graph, example, strict=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        except (AttributeError, RuntimeError) as error:  # TorchScript gone, or a graph it cannot trace
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warnings.warn(
                f"optimize_for_inference: TorchScript could not freeze the graph ({reason[:200]}); "
                "using the folded, channels-last eager graph",
                stacklevel=3,
            )
            return graph

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train(self, mode: bool = True) -> InferenceBackbone:
        if mode:
            raise RuntimeError("InferenceBackbone is for inference only; train the original backbone")
        self.training = False
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.compiled:  # Inductor's frozen weights are constants of the graph: no autograd through them
            from torch._inductor import config as inductor_config

            # the C++ wrapper calls the kernels from generated C++ instead of Python: ResNet-50 at batch 8, 224 px,
            # 1.01-1.03x the Python wrapper on an AVX2 EPYC (docs/results.md, "Inductor's C++ wrapper")
            cpp = x.device.type == "cpu"  # measured there only
            with torch.no_grad(), inductor_config.patch(freezing=True, cpp_wrapper=cpp):
                return dict(self.graph(self._layout(x)))
        return dict(self.graph(self._layout(x)))


def optimize_for_inference(
    backbone: Backbone, *, channels_last: bool = True, freeze: bool = True, compile: bool = False
) -> InferenceBackbone:
    """The fast inference form of ``backbone``; see :class:`InferenceBackbone`."""
    return InferenceBackbone(backbone, channels_last=channels_last, freeze=freeze, compile=compile)


def fast_inference(backbone: Backbone) -> Backbone:
    """The inference form where the backbone can be traced, else the backbone itself (in eval mode).

    timm models with data-dependent control flow cannot be traced by torch.fx; they run eagerly.
    """
    try:
        return optimize_for_inference(backbone)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError):
        return backbone.eval()


def channels_last_heads_pay(device: torch.device | str = "cpu") -> bool:
    """Whether a whole model's convolutions, heads included, infer faster channels-last on ``device``: on the CPU,
    where oneDNN has AVX-512 kernels (``torch.backends.cpu.get_cpu_capability()``), not on AVX2 alone.

    Faster R-CNN R50-FPN inference at 800 px on 2 threads, against the fast backbone alone (docs/results.md,
    "The detector in channels-last"): 1.04-1.06x on an AMD EPYC with AVX-512, 0.95x on one with AVX2 only.
    Off the CPU the host's instruction set says nothing: there the heads take the fast backbone's layout,
    channels-last on every device, so no layout change sits at the FPN's input (not measured: no GPU was lent).
    """
    if torch.device(device).type != "cpu":
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def fast_model_inference(
    model: torch.nn.Module, *, channels_last: bool | None = None, device: torch.device | str | None = None
) -> torch.nn.Module:
    """``model``, changed in place and returned, in its inference form: eval mode, its ``backbone`` through
    :func:`fast_inference`, and with ``channels_last`` every convolution's weights channels-last (``None``:
    where :func:`channels_last_heads_pay` on ``device``, the device the model will run on; ``None``: the one its
    parameters are on now).

    For a model whose head is convolutional too, as a detector's FPN and RPN head are: with the layout of the
    whole model oneDNN runs every convolution in NHWC. Faster R-CNN R50-FPN inference at 800 px on 2 CPU threads
    (docs/benchmarks.md, "Detector", on AVX-512): the fast backbone alone 1.09x torchvision's speed, this 1.15x
    (1.15x and 1.20x on a faster AVX-512 host, docs/results.md).
    """
    if channels_last is None:
        channels_last = channels_last_heads_pay(device if device is not None else next(model.parameters()).device)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.backbone = fast_inference(model.backbone)  # type: ignore[assignment]
    return model
