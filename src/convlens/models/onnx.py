"""ONNX models as PyTorch modules through onnx2torch (``onnx:PATH``).

Before conversion the ONNX graph is tidied so that convlens's methods get what they expect:
- a channels-last input (``N x H x W x 3``, what tf2onnx writes for Keras models) becomes an ``N x 3 x H x W``
  input: the exporter's leading Transpose is dropped, or one is added;
- a Softmax producing the model's output is split off (methods get logits; ``softmax(logits)`` is the ONNX
  model's output);
- initializers passed through ``Identity`` nodes (the PyTorch exporter's de-duplicated weights) are inlined,
  which onnx2torch needs for convolution weights.
Module names are onnx2torch's (the ONNX node names, ``/`` made ``.``); ``convlens layers onnx:PATH`` lists them.
"""

from __future__ import annotations

from pathlib import Path

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.models.imported import preprocess_mode, read_sidecar, resolve_classes, resolve_preprocessing
from convlens.models.keras.reader import IMPORT_EXTRA

ARCHITECTURE = "onnx"
DEFAULT_SIZE = (224, 224)
TO_CHANNELS_FIRST = [0, 3, 1, 2]


def _require():
    try:
        import onnx
        import onnx2torch
    except ImportError:
        raise ConvlensError(f"reading ONNX models needs onnx and onnx2torch: {IMPORT_EXTRA}") from None
    return onnx, onnx2torch


def load_onnx(path: str | Path, classes=None, preprocess=None, spec: str | None = None) -> ImageClassifier:
    """An ImageClassifier from an ONNX file (one image input, one output)."""
    onnx, onnx2torch = _require()
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"ONNX model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises many kinds; all mean the file is not ONNX
        raise ConvlensError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    info = prepare_graph(model, str(path))
    try:
        module = onnx2torch.convert(model)
    except NotImplementedError as exc:
        raise ConvlensError(f"{path}: onnx2torch cannot convert it ({exc})") from None
    module.eval()
    sidecar = read_sidecar(path)
    size = info["input_size"] or tuple(sidecar.get("input_size", DEFAULT_SIZE))
    preprocessing = resolve_preprocessing(preprocess, sidecar, size, "unit")
    class_names = resolve_classes(classes, sidecar, _output_width(module, preprocessing.input_size))
    metadata = {"source": str(path), "output_activation": info["output_activation"],
                "channels_last_input": info["channels_last"],
                "preprocess": preprocess_mode(preprocess, sidecar, "unit"),
                "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)}
    return ImageClassifier(module, preprocessing, class_names, spec=spec or f"onnx:{path}",
                           architecture=ARCHITECTURE, metadata=metadata)


def prepare_graph(model, source: str) -> dict:
    """Tidy ``model`` in place (see the module doc); returns input size, layout and the removed activation."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConvlensError(f"{source}: {len(inputs)} inputs and {len(graph.output)} outputs; convlens explains "
                            "image classifiers with one input and one output")
    _inline_identity_initializers(model)
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConvlensError(f"{source}: input {inputs[0].name} has rank {len(dims)}; convlens explains image models "
                            "(N x C x H x W or N x H x W x C)")
    channels_last = dims[3] in (1, 3) and dims[1] not in (1, 3)
    if channels_last:
        _to_channels_first_input(model, inputs[0])
        dims = [dims[0], dims[3], dims[1], dims[2]]
    activation = _split_output_softmax(model)
    size = (dims[2], dims[3]) if dims[2] and dims[3] else None
    return {"input_size": size, "channels_last": channels_last, "output_activation": activation}


def _inline_identity_initializers(model) -> None:
    from onnx import numpy_helper

    graph = model.graph
    by_name = {init.name: init for init in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in by_name:
            copy = numpy_helper.from_array(numpy_helper.to_array(by_name[node.input[0]]), node.output[0])
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _consumers(graph, name: str) -> list:
    return [node for node in graph.node if name in node.input]


def _to_channels_first_input(model, graph_input) -> None:
    """Feed the graph N x C x H x W: drop the exporter's NHWC->NCHW Transpose, or add NCHW->NHWC."""
    from onnx import helper

    graph = model.graph
    consumers = _consumers(graph, graph_input.name)
    first = consumers[0] if len(consumers) == 1 else None
    perm = next((list(a.ints) for a in first.attribute if a.name == "perm"), None) if first is not None else None
    dims = graph_input.type.tensor_type.shape.dim
    batch, height, width, channels = (dims[i].dim_param or dims[i].dim_value for i in range(4))
    if first is not None and first.op_type == "Transpose" and perm == TO_CHANNELS_FIRST:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == first.output[0]:
                    node.input[i] = graph_input.name
        graph.node.remove(first)
    else:
        inner = graph_input.name + "_nhwc"
        for node in consumers:
            for i, name in enumerate(node.input):
                if name == graph_input.name:
                    node.input[i] = inner
        graph.node.insert(0, helper.make_node("Transpose", [graph_input.name], [inner], perm=[0, 2, 3, 1],
                                              name="to_channels_last"))
    for dim, value in zip(dims, (batch, channels, height, width), strict=True):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value


def _split_output_softmax(model) -> str | None:
    graph = model.graph
    output = graph.output[0]
    producer = next((node for node in graph.node if output.name in node.output), None)
    if producer is None or producer.op_type != "Softmax" or len(_consumers(graph, output.name)) > 0:
        return None
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
    if axis not in (-1, 1):
        return None
    logits = producer.input[0]
    graph.node.remove(producer)
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = output.name
        for i, name in enumerate(node.input):
            if name == logits:
                node.input[i] = output.name
    return "softmax"


def _output_width(module, size: tuple[int, int]) -> int:
    import torch

    with torch.inference_mode():
        out = module(torch.zeros(1, 3, *size))
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 2:
        raise ConvlensError(f"the ONNX model's output has shape {tuple(out.shape)}; convlens explains classifiers "
                            "(N x classes)")
    return int(out.shape[1])
