"""An onnx2torch model as JSON, and back as a native ``torch.fx.GraphModule`` with neither onnx nor onnx2torch.

``describe_graph(module)`` writes the graph: every node (``placeholder``, ``get_attr``, ``call_module``,
``call_function``, ``call_method``, ``output``) with its arguments, and every submodule as a class name from a
whitelist plus its constructor arguments: the ``torch.nn`` layers onnx2torch builds (``TORCH_MODULES``) and, for
onnx2torch's own modules, their native equivalents in ``onnx_native`` (``translate``). ``build_graph`` rebuilds
the module from that JSON using only the whitelists: nothing is evaluated, imported or unpickled from the file.
Module names stay onnx2torch's, so ``--layer`` names are the same before and after ``convlens convert``.
Anything outside the whitelists is refused in one line naming the node and its class.
"""

from __future__ import annotations

import keyword
import math
import operator

import torch
from torch import fx, nn

from convlens.errors import ConvlensError
from convlens.models import onnx_native
from convlens.models.onnx_native import DTYPES, check_name, dtype_name

GRAPH_FORMAT = "convlens-fx-graph"
GRAPH_VERSION = 1

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_ATTRIBUTES = {
    **{name: _CONV for name in ("Conv1d", "Conv2d", "Conv3d")},
    **{name: (*_CONV, "output_padding") for name in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")},
    "Linear": ("in_features", "out_features"),
    **{name: _NORM for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
                                "InstanceNorm3d")},
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
    "LocalResponseNorm": ("size", "alpha", "beta", "k"),
    **{name: ("inplace",) for name in ("ReLU", "ReLU6", "SELU", "Hardswish", "Hardsigmoid", "SiLU", "Mish")},
    **{name: () for name in ("Sigmoid", "Tanh", "Softsign", "Identity")},
    "GELU": ("approximate",), "LeakyReLU": ("negative_slope", "inplace"), "ELU": ("alpha", "inplace"),
    "CELU": ("alpha", "inplace"), "Softplus": ("beta", "threshold"), "Softmax": ("dim",), "LogSoftmax": ("dim",),
    **{name: _MAX_POOL for name in ("MaxPool1d", "MaxPool2d", "MaxPool3d")},
    "AvgPool1d": _AVG_POOL, "AvgPool2d": (*_AVG_POOL, "divisor_override"),
    "AvgPool3d": (*_AVG_POOL, "divisor_override"),
    **{name: ("output_size",) for name in ("AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
                                           "AdaptiveMaxPool2d")},
    "Flatten": ("start_dim", "end_dim"), "Dropout": ("p", "inplace"),
}
TORCH_MODULES = {name: getattr(nn, name) for name in _ATTRIBUTES}
_WITH_BIAS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
              "LayerNorm")

FUNCTIONS = {"operator.getitem": operator.getitem, "operator.add": operator.add, "operator.sub": operator.sub,
             "operator.mul": operator.mul, "operator.truediv": operator.truediv, "torch.flatten": torch.flatten,
             "torch.cat": torch.cat, "torch.add": torch.add, "torch.mul": torch.mul, "torch.matmul": torch.matmul,
             "torch.relu": torch.relu, "torch.nn.functional.relu": nn.functional.relu}
_FUNCTION_NAMES = {id(function): name for name, function in FUNCTIONS.items()}
METHODS = frozenset({"size", "view", "reshape", "flatten", "permute", "contiguous", "mean", "squeeze",
                     "unsqueeze", "transpose", "float", "relu", "softmax"})

_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "_onnx_div": "div"}
_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}
_COMPARE_BY_FUNCTION = {id(onnx_native.BINARY[name]): name for name in ("eq", "lt", "le", "gt", "ge")}
_UNARY_BY_FUNCTION = {id(function): name for name, function in onnx_native.UNARY.items()}


def _onnx2torch(module: nn.Module) -> tuple[str, dict] | None:
    """The native class and arguments for one of onnx2torch's own modules (None: not one it knows)."""
    kind, get = type(module).__name__, module.__dict__.get
    if kind == "OnnxBinaryMathOperation" or kind == "OnnxPow":
        if get("broadcast") == 1 and get("axis") is not None:
            return None  # opset-1 axis broadcasting: not in the whitelist
        function = getattr(get("math_op_function"), "__name__", None) if kind != "OnnxPow" else "pow"
        return ("BinaryOp", {"op": _BINARY.get(function, function)}) if function in (*_BINARY, "pow") else None
    if kind == "OnnxCompare":
        name = _COMPARE_BY_FUNCTION.get(id(get("compare_function")))
        return ("BinaryOp", {"op": name}) if name else None
    if kind == "OnnxMod" and get("fmod") in (0, 1):
        return "BinaryOp", {"op": "fmod" if get("fmod") else "remainder"}
    if kind == "OnnxFunction":
        name = _UNARY_BY_FUNCTION.get(id(get("function")))
        return ("UnaryOp", {"op": name}) if name else None
    simple = {"OnnxErf": ("UnaryOp", {"op": "erf"}), "OnnxSqrt": ("UnaryOp", {"op": "sqrt"}),
              "OnnxNeg": ("UnaryOp", {"op": "neg"}), "OnnxReciprocal": ("UnaryOp", {"op": "reciprocal"}),
              "OnnxMatMul": ("MatMul", {}), "OnnxGlobalAveragePool": ("GlobalAveragePool", {}),
              "OnnxGlobalAveragePoolWithKnownInputShape": ("GlobalAveragePool", {}), "OnnxReshape": ("Reshape", {}),
              "OnnxSlice": ("Slice", {}), "OnnxCopyIdentity": ("Copy", {}), "OnnxPReLU": ("PReLU", {}),
              "OnnxExpand": ("Expand", {}), "OnnxSqueezeDynamicAxes": ("SqueezeDynamic", {}),
              "OnnxWhere": ("Where", {})}
    if kind in simple:
        return simple[kind]
    if kind == "OnnxGemm":
        return "Gemm", {"alpha": get("alpha"), "beta": get("beta"), "trans_a": bool(get("trans_a")),
                        "trans_b": bool(get("trans_b"))}
    if kind == "OnnxReduceStaticAxes" and get("operation_type") in _REDUCE:
        return "Reduce", {"op": _REDUCE[get("operation_type")], "axes": get("axes"), "keepdims": get("keepdims")}
    if kind == "OnnxCast":
        return "Cast", {"dtype": dtype_name(get("torch_dtype"), "Cast")}
    if kind in ("OnnxConstant", "OnnxConstantOfShape") and not module._modules and set(module._buffers) == {"value"}:
        return kind[4:], _tensors_config(module)
    arguments = {"OnnxFlatten": ("FlattenAt", {"axis": get("axis")}),
                 "OnnxTranspose": ("Permute", {"perm": get("perm")}),
                 "OnnxShape": ("Shape", {"start": get("_start"), "end": get("_end")}),
                 "OnnxGather": ("Gather", {"axis": get("_axis")}),
                 "OnnxConcat": ("Concat", {"axis": get("axis")}),
                 "OnnxClip": ("Clamp", {"min": get("min_val"), "max": get("max_val")}),
                 "OnnxPadDynamic": ("PadDynamic", {"mode": get("mode")}),
                 "OnnxPadStatic": ("Pad", {"pads": get("pads"), "mode": get("mode"), "value": get("constant_value")}),
                 "OnnxHardSigmoid": ("HardSigmoid", {"alpha": get("alpha"), "beta": get("beta")}),
                 "OnnxSoftmaxV1V11": ("FlatSoftmax", {"axis": get("axis"), "log": get("is_log")}),
                 "OnnxSqueezeStaticAxes": ("Squeeze", {"axes": get("axes")}),
                 "OnnxUnsqueezeStaticAxes": ("Unsqueeze", {"axes": get("_axes")})}
    return arguments.get(kind)


def _tensors_config(module: nn.Module) -> dict:
    for name in module._buffers:
        check_name(name, "tensor")
    return {"buffers": {name: {"shape": list(value.shape), "dtype": dtype_name(value.dtype, name)}
                        for name, value in module._buffers.items() if value is not None}}


def translate(name: str, module: nn.Module) -> dict:
    """``{"name", "class", "kwargs"}`` (``"children"`` for ``nn.Sequential``) for one submodule."""
    check_name(name, "module")
    cls = type(module)
    if cls is nn.Sequential:
        return {"name": name, "class": "Sequential", "kwargs": {},
                "children": [translate(child_name, child) for child_name, child in module.named_children()]}
    if cls is nn.Module and not module._modules and not module._parameters:  # fx's copy of the initializers
        return {"name": name, "class": "Tensors", "kwargs": _tensors_config(module)}
    if TORCH_MODULES.get(cls.__name__) is cls:
        kwargs = {attribute: getattr(module, attribute) for attribute in _ATTRIBUTES[cls.__name__]}
        if cls.__name__ in _WITH_BIAS:
            kwargs["bias"] = getattr(module, "bias", None) is not None
        return {"name": name, "class": cls.__name__, "kwargs": kwargs}
    if onnx_native.MODULES.get(cls.__name__) is cls:  # already native: a model loaded from a checkpoint
        config = module.config() if hasattr(module, "config") else {}
        return {"name": name, "class": cls.__name__, "kwargs": config}
    native = _onnx2torch(module) if cls.__module__.startswith("onnx2torch.") else None
    if native is None:
        raise ConvlensError(f"module {name!r} is a {cls.__module__}.{cls.__name__}, which convert cannot write "
                            "as a native module yet; use the model as onnx:PATH instead")
    return {"name": name, "class": native[0], "kwargs": native[1]}


def describe_graph(module: fx.GraphModule) -> dict:
    """The JSON description of an onnx2torch (or already native) GraphModule."""
    if not isinstance(module, fx.GraphModule):
        raise ConvlensError(f"convert writes ONNX models as fx graphs; this one is a {type(module).__name__}")
    modules = [translate(name, child) for name, child in module.named_children()]
    nodes = [_describe_node(node) for node in module.graph.nodes]
    return {"format": GRAPH_FORMAT, "version": GRAPH_VERSION,
            "modules": [_encode_entry(entry) for entry in modules],
            "nodes": nodes}


def _encode_entry(entry: dict) -> dict:
    encoded = {**entry, "kwargs": {key: encode(value, entry["name"]) for key, value in entry["kwargs"].items()}}
    if "children" in entry:
        encoded["children"] = [_encode_entry(child) for child in entry["children"]]
    return encoded


def _describe_node(node: fx.Node) -> dict:
    target = node.target
    if node.op == "call_function":
        target = _FUNCTION_NAMES.get(id(node.target))
        if target is None:
            raise ConvlensError(f"node {node.name!r} calls {getattr(node.target, '__qualname__', node.target)}, "
                                "which convert cannot write yet; use the model as onnx:PATH instead")
    elif node.op == "call_method" and target not in METHODS:
        raise ConvlensError(f"node {node.name!r} calls the tensor method {target!r}, which convert cannot "
                            "write yet; use the model as onnx:PATH instead")
    return {"op": node.op, "name": node.name, "target": str(target),
            "args": [encode(arg, node.name) for arg in node.args],
            "kwargs": {key: encode(value, node.name) for key, value in node.kwargs.items()}}


def encode(value, where: str):
    """A node argument or constructor argument as JSON: tagged objects for everything JSON lacks."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, torch.Size)):
        return [encode(item, where) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(item, where) for item in value]}
    if isinstance(value, dict):
        return {"dict": {_check_keyword(key, where): encode(item, where) for key, item in value.items()}}
    if isinstance(value, slice):
        return {"slice": [encode(value.start, where), encode(value.stop, where), encode(value.step, where)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": dtype_name(value, where)}
    raise ConvlensError(f"{where}: argument of type {type(value).__name__} cannot be written to a checkpoint")


def decode(value, nodes: dict):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode(item, nodes) for item in value]
    if isinstance(value, dict) and len(value) == 1:  # a tagged value (``encode``)
        (tag, inner), = value.items()
        if tag == "node" and inner in nodes:
            return nodes[inner]
        if tag == "tuple" and isinstance(inner, list):
            return tuple(decode(item, nodes) for item in inner)
        if tag == "dict" and isinstance(inner, dict):
            return {_check_keyword(key, "checkpoint graph"): decode(item, nodes) for key, item in inner.items()}
        if tag == "slice" and isinstance(inner, list) and len(inner) == 3:
            return slice(*(decode(item, nodes) for item in inner))
        if tag == "float" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if tag == "ellipsis":
            return Ellipsis
        if tag == "dtype" and inner in DTYPES:
            return DTYPES[inner]
    raise ConvlensError(f"checkpoint graph: cannot read the value {str(value)[:80]}")


def build_graph(graph: dict) -> fx.GraphModule:
    """The native GraphModule ``graph`` describes, with zero weights (a checkpoint's safetensors fill them)."""
    if not isinstance(graph, dict) or graph.get("format") != GRAPH_FORMAT:
        raise ConvlensError("checkpoint graph: not a convlens fx graph description")
    if graph.get("version") != GRAPH_VERSION:
        raise ConvlensError(f"checkpoint graph: version {graph.get('version')} (this convlens reads version "
                            f"{GRAPH_VERSION}); update convlens")
    root = nn.Module()
    for entry in graph.get("modules", []):
        if not isinstance(entry, dict):
            raise ConvlensError("checkpoint graph: a module entry is not a JSON object")
        root.add_module(check_name(entry.get("name"), "checkpoint graph: module"), _build_module(entry))
    buffers = {name for name, _ in root.named_buffers()}
    built = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for entry in graph.get("nodes", []):
        if not isinstance(entry, dict):
            raise ConvlensError("checkpoint graph: a node entry is not a JSON object")
        op, name, target = entry.get("op"), str(entry.get("name")), entry.get("target")
        target = _resolve_target(op, entry.get("target"), root, buffers)
        if target is None:
            raise ConvlensError(f"checkpoint graph: node {name!r} ({op} {entry.get('target')!r}) is not one "
                                "convlens rebuilds")
        args, kwargs = _decode_arguments(entry, nodes, f"node {name!r}")
        node = built.create_node(op, target, tuple(args), kwargs, name=name)
        nodes[name] = node
    try:
        built.lint()
    except RuntimeError as exc:
        raise ConvlensError(f"checkpoint graph: inconsistent ({exc})") from None
    return fx.GraphModule(root, built)


def _check_keyword(key, where: str) -> str:
    """A keyword argument's name: fx writes it into ``forward``'s source as ``key = value``."""
    if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
        raise ConvlensError(f"{where}: keyword argument {str(key)[:80]!r} is not a Python identifier")
    return key


def _decode_arguments(entry: dict, nodes: dict, where: str) -> tuple[list, dict]:
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ConvlensError(f"checkpoint graph: {where} has malformed arguments")
    where = f"checkpoint graph: {where}"
    return ([decode(arg, nodes) for arg in args],
            {_check_keyword(key, where): decode(value, nodes) for key, value in kwargs.items()})


def _resolve_target(op, target, root: nn.Module, buffers: set[str]):
    """The node's target when the whitelists allow it (a function from ``FUNCTIONS``, a method from
    ``METHODS``, a submodule or buffer built from the description), else None."""
    if not isinstance(target, str):
        return None
    allowed = {"call_function": lambda: target in FUNCTIONS, "call_method": lambda: target in METHODS,
               "call_module": lambda: _is_submodule(root, target), "get_attr": lambda: target in buffers,
               "placeholder": lambda: target.isidentifier() and not keyword.iskeyword(target),
               "output": lambda: target == "output"}
    if op not in allowed or not allowed[op]():
        return None
    return FUNCTIONS[target] if op == "call_function" else target


def _is_submodule(root: nn.Module, target) -> bool:
    if not isinstance(target, str):
        return False
    try:
        root.get_submodule(target)  # walks registered submodules only, never arbitrary attributes
    except AttributeError:
        return False
    return True


def _build_module(entry: dict) -> nn.Module:
    name, kind = check_name(entry.get("name"), "checkpoint graph: module"), entry.get("class")
    if kind == "Sequential":
        sequential = nn.Sequential()
        for child in entry.get("children", []):
            sequential.add_module(check_name(child.get("name"), "checkpoint graph: module"), _build_module(child))
        return sequential
    cls = TORCH_MODULES.get(kind) or onnx_native.MODULES.get(kind)
    if cls is None:
        raise ConvlensError(f"checkpoint graph: module {name!r} has class {kind!r}, not one convlens rebuilds")
    _, kwargs = _decode_arguments(entry, {}, f"module {name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ConvlensError(f"checkpoint graph: module {name!r} ({kind}) cannot be built ({exc})") from None


def to_native(module: fx.GraphModule) -> tuple[fx.GraphModule, dict]:
    """The native twin of an onnx2torch GraphModule (its weights copied) and its JSON description."""
    from convlens.models.zoo import load_weights_into

    graph = describe_graph(module)
    native = build_graph(graph)
    load_weights_into(native, module.state_dict(), "the ONNX model's weights")
    return native.eval(), graph
