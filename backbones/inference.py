"""A faster inference form of any traceable backbone: BatchNorm folded, channels-last, each convolution fused with
its ReLU and residual addition."""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from backbones.base import Backbone, first_conv_in_channels

_RELUS = (torch.relu, torch.relu_, nn.functional.relu)
_ADDS = (operator.add, torch.add)


def onednn_fusion_available(device: torch.device | str) -> bool:
    """Whether :func:`fuse_conv_pointwise` can run a graph on ``device``: oneDNN's fused convolutions are CPU ops."""
    return torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(graph: torch.fx.GraphModule, node: torch.fx.Node | None) -> nn.Module | None:
    return graph.get_submodule(str(node.target)) if node is not None and node.op == "call_module" else None


def _is_relu(graph: torch.fx.GraphModule, node: torch.fx.Node | None) -> bool:
    if node is None:
        return False
    if node.op == "call_function":
        return node.target in _RELUS and len(node.args) == 1
    return type(_module(graph, node)) is nn.ReLU  # exactly: a subclass may compute something else


def _passes_through(graph: torch.fx.GraphModule, node: torch.fx.Node | None) -> bool:
    """An eval-mode module that returns its input: Identity, Dropout, stochastic depth (timm's DropPath)."""
    module = _module(graph, node)
    return isinstance(module, (nn.Identity, nn.Dropout)) or type(module).__name__ == "DropPath"


_FRESH_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_FRESH_FUNCTIONS = (*_ADDS, torch.cat, torch.relu, nn.functional.relu, torch.ops.mkldnn._convolution_pointwise.default)


def _returns_its_input(graph: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node``'s result may be its first argument's tensor: a module that passes its input through, one
    that works in place (``nn.ReLU(inplace=True)``), or a fused convolution that adds into it."""
    if node.op == "call_function":
        return node.target is torch.ops.mkldnn._convolution_pointwise_.binary or bool(node.kwargs.get("inplace"))
    return _passes_through(graph, node) or bool(getattr(_module(graph, node), "inplace", False))


def _reads_into_new_tensor(graph: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node`` only reads its inputs and returns a new tensor (a view of an input would be another name
    for it): the layers and functions of convolutional backbones; anything else counts as a possible view."""
    if node.op == "call_module":
        return isinstance(_module(graph, node), _FRESH_MODULES)
    return node.op == "call_function" and node.target in _FRESH_FUNCTIONS and not node.kwargs.get("inplace")


def _overwritable(graph: torch.fx.GraphModule, tensor: torch.fx.Node, at: torch.fx.Node, reader: Any) -> bool:
    """Whether ``tensor`` may be written over at node ``at`` by a convolution that reads ``reader``: nothing reads
    it, under any of its names, after ``at``, the convolution does not read it, and it is neither the graph's
    input nor one of its outputs.

    Its names are the nodes that may hold the same tensor: up through the nodes that return their input (an
    Identity, an in-place ReLU) to where it was made, then down through them again. Any other reader must be one
    that returns a new tensor; one that might return a view is refused rather than followed."""
    root = tensor
    while _returns_its_input(graph, root) and isinstance(root.args[0], torch.fx.Node):
        root = root.args[0]
    if root.op not in ("call_function", "call_module"):
        return False
    order = {node: index for index, node in enumerate(graph.graph.nodes)}
    pending = [root]
    while pending:
        node = pending.pop()
        if node is reader:  # oneDNN would write the sum into the convolution's own input as it reads it
            return False
        for user in node.users:
            if user.op == "output" or order[user] > order[at]:
                return False
            if _returns_its_input(graph, user) and user.args[0] is node:
                pending.append(user)
            elif user is not at and not _reads_into_new_tensor(graph, user):
                return False
    return True


def _residual_relu(
    graph: torch.fx.GraphModule, conv: torch.fx.Node, branch: torch.fx.Node, add: torch.fx.Node | None
) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(the shortcut, the ReLU) where ``add`` sums ``branch`` (``conv``'s output) and a shortcut that may be
    overwritten, and only a ReLU reads the sum; else None."""
    if add is None or add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
        return None
    relu = _only_user(add)
    others = [arg for arg in add.args if arg is not branch]
    if len(others) != 1 or not isinstance(others[0], torch.fx.Node) or not _is_relu(graph, relu):
        return None
    if not _overwritable(graph, others[0], add, reader=conv.args[0]):
        return None
    return others[0], relu  # type: ignore[return-value]


def fuse_conv_pointwise(graph: torch.fx.GraphModule) -> int:
    """Rewrite ``graph`` (in place, for inference) so that oneDNN runs each 2-D convolution followed by a ReLU, or by
    a residual addition and a ReLU, as one fused convolution; returns how many convolutions were fused.

    These are the operators that Inductor's freezing emits on the CPU (``mkldnn._convolution_pointwise`` with a
    ``relu`` post-op; ``mkldnn._convolution_pointwise_.binary``, which adds the convolution into the shortcut
    tensor in place, then applies the ReLU), without compiling for each input shape: the graph stays an FX graph
    that runs any size. Each convolution then writes its output once, where a separate ReLU and addition read and
    write it twice more. The shortcut is overwritten only where nothing reads it later and it is neither the
    graph's input nor one of its outputs; elsewhere, and for any other pattern, the graph is left as it was.
    On 2 cores of an Intel Xeon with AMX, against the TorchScript-frozen graph: ResNet-50 1.03x at 224 px, batch 8,
    and 1.3x at 800x1088, batch 2; Faster R-CNN R50-FPN inference 1.12-1.14x (docs/results.md, "oneDNN's fused
    convolutions without TorchScript").
    """
    fused = 0
    for node in list(graph.graph.nodes):
        conv = _module(graph, node)
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        if conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
            continue
        end, user = node, _only_user(node)
        while _passes_through(graph, user):
            end, user = user, _only_user(user)  # type: ignore[arg-type]
        shortcut: torch.fx.Node | None = None
        if _is_relu(graph, user):
            replaced = user
        elif (residual := _residual_relu(graph, node, end, user)) is not None:
            shortcut, replaced = residual
        else:
            continue
        with graph.graph.inserting_before(node):
            weight = graph.graph.get_attr(f"{node.target}.weight")
            bias = graph.graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
        convolution = (node.args[0], weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation))
        with graph.graph.inserting_after(replaced):
            if shortcut is None:
                op, args = torch.ops.mkldnn._convolution_pointwise.default, (*convolution, conv.groups, "relu", [], "")
            else:
                op = torch.ops.mkldnn._convolution_pointwise_.binary
                args = (shortcut, *convolution, conv.groups, "add", 1.0, "relu", [], "")
            fused_node = graph.graph.call_function(op, args)
        replaced.replace_all_uses_with(fused_node)
        fused += 1
    graph.graph.eliminate_dead_code()
    graph.graph.lint()
    graph.recompile()
    return fused


class InferenceBackbone(Backbone):
    """An eval-only copy of a backbone with the same outputs (to float rounding) and ``feature_info``.

    Each BatchNorm that follows a convolution is folded into the convolution (torch.fx's ``fuse``); weights and
    inputs use the channels-last layout that oneDNN and cuDNN convolutions prefer; and with ``freeze`` each
    convolution runs fused with the ReLU and the residual addition that follow it. On the CPU that is an FX graph
    calling oneDNN's fused convolutions (:func:`fuse_conv_pointwise`, the operators Inductor emits), which serves
    any input size and needs no TorchScript; on other devices the graph is traced, frozen and passed through
    ``torch.jit.optimize_for_inference``. Training it is an error: folded statistics are no longer statistics.
    Speed against torchvision's eager model: docs/benchmarks.md ("Backbone").

    Args:
        backbone: the backbone to copy; it is left unchanged.
        channels_last: use the channels-last memory layout.
        freeze: fuse each convolution with its ReLU and residual addition (see above).
        onednn: how ``freeze`` fuses: through oneDNN's operators in the FX graph (True), or TorchScript's freezing
            (False); None: oneDNN where :func:`onednn_fusion_available` on the device of the backbone's parameters.
            TorchScript is deprecated from torch 2.14; its path stays for devices oneDNN does not serve.
        compile: instead, ``torch.compile`` (Inductor) with weight freezing, the weights folded into the generated
            code as constants, and the C++ wrapper. It compiles for each new input shape (seconds on a CPU), so it
            suits a server with fixed input sizes; the task runners' eval and predict, whose shapes vary, keep
            the fused FX graph. Outputs run without autograd.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        channels_last: bool = True,
        freeze: bool = True,
        onednn: bool | None = None,
        compile: bool = False,
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
        self.onednn_fused = 0  # convolutions that run fused through oneDNN's operators
        if compile:
            # compiled at the first call of each input shape, under Inductor's freezing (see forward)
            graph = torch.compile(graph, dynamic=False)  # type: ignore[assignment]
        elif freeze:
            if onednn is None:
                onednn = onednn_fusion_available(next(graph.parameters()).device)
            if onednn:
                plain = torch.fx.Graph()
                plain.output(plain.graph_copy(graph.graph, {}))  # type: ignore[arg-type]
                self.onednn_fused = fuse_conv_pointwise(graph)  # type: ignore[arg-type]
                # oneDNN's operators are the CPU's: a copy moved to another device runs the same modules unfused
                # (kept outside the module tree: it shares every parameter with ``graph``)
                object.__setattr__(self, "off_cpu", torch.fx.GraphModule(graph, plain))
            else:
                graph = self._torchscript(graph)
        self.graph = graph
        self.frozen = isinstance(graph, torch.jit.ScriptModule)  # the TorchScript-frozen form
        self.training = False

    def _torchscript(self, graph: torch.nn.Module) -> torch.nn.Module:
        """TorchScript-freeze ``graph``, or return it unchanged where TorchScript cannot.

        torch 2.14 marks TorchScript deprecated. On the CPU oneDNN's fused operators replace it (``onednn``);
        this path serves the devices they do not, and ``onednn=False`` for comparison.
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
        if self.onednn_fused:  # oneDNN's fused operators have no autograd; the weights are fixed anyway
            if x.device.type != "cpu":
                with torch.no_grad():
                    return dict(self.off_cpu(self._layout(x)))
            # float32 under autocast too: autocast does not cast for the fused operators, and the unfused
            # convolutions beside them would hand them bfloat16 maps
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                return dict(self.graph(self._layout(x.float())))
        return dict(self.graph(self._layout(x)))


def optimize_for_inference(
    backbone: Backbone,
    *,
    channels_last: bool = True,
    freeze: bool = True,
    onednn: bool | None = None,
    compile: bool = False,
) -> InferenceBackbone:
    """The fast inference form of ``backbone``; see :class:`InferenceBackbone`."""
    return InferenceBackbone(backbone, channels_last=channels_last, freeze=freeze, onednn=onednn, compile=compile)


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
    parameters are on now). The model stays where it is; the backbone's fused CPU form, moved to another device
    later, runs there unfused (:class:`InferenceBackbone`).

    For a model whose head is convolutional too, as a detector's FPN and RPN head are: with the layout of the
    whole model oneDNN runs every convolution in NHWC. Faster R-CNN R50-FPN inference at 800 px on 2 CPU threads
    (docs/benchmarks.md, "Detector", on AVX-512): the fast backbone alone 1.09x torchvision's speed, this 1.15x
    (1.15x and 1.20x on a faster AVX-512 host, docs/results.md), both with the TorchScript-fused backbone of before
    2026-12-07; docs/results.md, "oneDNN's fused convolutions without TorchScript", has the form of now.
    """
    if channels_last is None:
        channels_last = channels_last_heads_pay(device if device is not None else next(model.parameters()).device)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.backbone = fast_inference(model.backbone)  # type: ignore[assignment]
    return model
