"""Keras's functional graph as one ``nn.Module``: each Keras layer is a submodule of the same name.

Sequential models, functional graphs (branches, shared inputs, layers called more than once) and nested models
(a model used as a layer becomes a ``KerasGraph`` submodule, so its layers are ``outer.inner``) share one
representation: a list of calls, each running one layer's modules on tensors named ``layer:node:tensor``.

Modules are built on the meta device and run on meta tensors as they are built, which gives every layer its
input shape (channels, Flatten sizes) without computing anything; the weights are loaded once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.keras import modules as km
from convlens.models.keras.layers import (
    CODE_LAYERS,
    CONVERTERS,
    PASSTHROUGH,
    Converted,
    Layer,
    Value,
    activation_module,
)
from convlens.models.keras.reader import KerasFile, WeightNode

MODEL_CLASSES = {"Functional", "Model", "Sequential"}
Ref = tuple[str, int, int]


def key(ref: Ref) -> str:
    return f"{ref[0]}:{ref[1]}:{ref[2]}"


@dataclass
class Step:
    modules: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class KerasGraph(nn.Module):
    """A converted Keras model (or nested model): runs its layers' modules in Keras's order."""

    def __init__(self, name: str, input_keys: list[str], output_keys: list[str]):
        super().__init__()
        self.keras_name = name
        self.input_keys = list(input_keys)
        self.output_keys = list(output_keys)
        self.steps: list[Step] = []
        self.output_layouts: list[str | None] = []

    def forward(self, *inputs: torch.Tensor):
        env = dict(zip(self.input_keys, inputs, strict=True))
        for step in self.steps:
            out = self._modules[step.modules[0]](*[env[k] for k in step.inputs])
            for name in step.modules[1:]:
                out = self._modules[name](out)
            if len(step.outputs) == 1:
                env[step.outputs[0]] = out
            else:
                env.update(zip(step.outputs, out, strict=True))
        outputs = [env[k] for k in self.output_keys]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


@dataclass
class Entry:
    name: str
    class_name: str
    config: dict
    calls: list[list[Ref]]
    module: str | None = None
    registered_name: str | None = None


@dataclass
class ModelSpec:
    name: str
    entries: list[Entry]
    inputs: list[Ref]
    outputs: list[Ref]
    consumers: dict[str, list[Entry]] = field(default_factory=dict)


def model_spec(class_name: str, config) -> ModelSpec:
    """A Sequential or functional config (Keras 2 or 3) as one list of layer calls."""
    spec = _sequential_spec(config) if class_name == "Sequential" else _functional_spec(config)
    for entry in spec.entries:
        for refs in entry.calls:
            for ref in refs:
                spec.consumers.setdefault(key(ref), []).append(entry)
    return spec


def _entry(raw: dict, calls: list[list[Ref]]) -> Entry:
    config = raw.get("config", {})
    name = raw.get("name") or (config.get("name") if isinstance(config, dict) else None)
    if not name:
        raise ConvlensError(f"a {raw.get('class_name')} layer in the config has no name")
    return Entry(name, raw["class_name"], config, calls, raw.get("module"), raw.get("registered_name"))


def _sequential_spec(config) -> ModelSpec:
    layers = config["layers"] if isinstance(config, dict) else config
    name = config.get("name", "sequential") if isinstance(config, dict) else "sequential"
    if not layers:
        raise ConvlensError(f"Sequential model {name} has no layers")
    entries = []
    if layers[0]["class_name"] != "InputLayer":
        first = layers[0].get("config", {})
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        entries.append(Entry(f"{name}_input", "InputLayer", {"batch_shape": shape}, []))
    for raw in layers:
        previous = [[(entries[-1].name, 0, 0)]] if entries else []
        entries.append(_entry(raw, previous))
    return ModelSpec(name, entries, [(entries[0].name, 0, 0)], [(entries[-1].name, 0, 0)])


def _functional_spec(config: dict) -> ModelSpec:
    entries = [_entry(raw, _calls(raw)) for raw in config["layers"]]
    return ModelSpec(config.get("name", "model"), entries, _refs(config["input_layers"]),
                     _refs(config["output_layers"]))


def _refs(refs) -> list[Ref]:
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [(r[0], int(r[1]), int(r[2])) for r in refs]


def _calls(raw: dict) -> list[list[Ref]]:
    """Each call's input tensors: Keras 2 ``[[name, node, tensor, kwargs], ...]`` or Keras 3 ``{"args": ...}``."""
    calls = []
    for node in raw.get("inbound_nodes", []):
        if isinstance(node, dict):
            calls.append(list(_keras3_refs(node.get("args", []))))
        else:
            calls.append([(r[0], int(r[1]), int(r[2])) for r in node])
    return calls


def _keras3_refs(obj):
    if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
        history = obj["config"]["keras_history"]
        yield history[0], int(history[1]), int(history[2])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _keras3_refs(item)


def _data_format(config) -> str:
    """``"cf"`` when any layer of the model is channels_first, else ``"cl"``."""
    if isinstance(config, dict):
        if config.get("data_format") == "channels_first":
            return "cf"
        return "cf" if any(_data_format(v) == "cf" for v in config.values()) else "cl"
    if isinstance(config, list):
        return "cf" if any(_data_format(v) == "cf" for v in config) else "cl"
    return "cl"


def _module_name(name: str) -> str:
    return name.replace(".", "_")


class Builder:
    """Converts a ``KerasFile``; ``build()`` returns the module and what it learnt (input shape, softmax)."""

    def __init__(self, file: KerasFile, probe_size: tuple[int, int] = (224, 224)):
        self.file = file
        self.keras_major = file.keras_major
        self.layout = _data_format(file.config["config"])
        self.probe_size = probe_size
        self.state: dict[str, torch.Tensor] = {}
        self.output_activation: str | None = None
        self.input_shape: tuple[int | None, ...] | None = None
        self.num_outputs = 0
        self._spec: ModelSpec | None = None
        self._flattened: dict[tuple[int, str], tuple[int, int, int]] = {}

    def build(self) -> KerasGraph:
        try:
            spec = model_spec(self.file.config["class_name"], self.file.config["config"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ConvlensError(f"{self.file.source}: not a model config the Keras converter reads "
                                f"({exc.__class__.__name__}: {exc})") from None
        if len(spec.outputs) != 1:
            raise ConvlensError(f"{self.file.source}: the model has {len(spec.outputs)} outputs; convlens explains "
                                "classifiers with one output")
        inputs = [self._input_value(spec, ref) for ref in spec.inputs]
        graph, outputs = self._build_model(spec, (), "", inputs, {0})
        self.num_outputs = int(outputs[0].tensor.shape[1])
        graph.to_empty(device="cpu")
        own = graph.state_dict()
        for name, tensor in own.items():
            if name.endswith("num_batches_tracked"):
                self.state.setdefault(name, torch.zeros((), dtype=tensor.dtype))
        graph.load_state_dict(self.state, strict=True)
        return graph.eval()

    # ---- inputs -------------------------------------------------------------------------------------------
    def _input_value(self, spec: ModelSpec, ref: Ref) -> Value:
        entry = next((e for e in spec.entries if e.name == ref[0]), None)
        shape = None
        if entry is not None:
            shape = entry.config.get("batch_shape") or entry.config.get("batch_input_shape")
        if not shape or len(shape) != 4:
            raise ConvlensError(f"{self.file.source}: input {ref[0]} has shape {shape}; convlens explains image "
                                "models with a (batch, height, width, channels) input")
        self.input_shape = tuple(shape[1:])
        if self.layout == "cl":
            height, width, channels = shape[1:]
        else:
            channels, height, width = shape[1:]
        height, width = height or self.probe_size[0], width or self.probe_size[1]
        return Value(torch.empty(1, channels or 3, height, width, device="meta"), self.layout)

    # ---- graph --------------------------------------------------------------------------------------------
    def _build_model(self, spec: ModelSpec, path: tuple[str, ...], prefix: str, inputs: list[Value],
                     final: set[int]) -> tuple[KerasGraph, list[Value]]:
        graph = KerasGraph(spec.name, [key(r) for r in spec.inputs], [key(r) for r in spec.outputs]).eval()
        env = {key(ref): value for ref, value in zip(spec.inputs, inputs, strict=True)}
        final_keys = {key(spec.outputs[i]) for i in final}
        taken = {_module_name(e.name) for e in spec.entries}
        for entry in spec.entries:
            if entry.class_name == "InputLayer":
                continue
            _check_allowed(entry)
            names: tuple[str, ...] | None = None
            for index, refs in enumerate(entry.calls):
                try:
                    values = [env[key(ref)] for ref in refs]
                except KeyError as exc:
                    raise ConvlensError(f"layer {entry.name}: its input {exc.args[0]} is not in the graph") from None
                out_keys = [f"{entry.name}:{index}:{k}" for k in range(self._output_count(entry))]
                if entry.class_name in MODEL_CLASSES:
                    if names is None:
                        child_spec = model_spec(entry.class_name, entry.config)
                        child_final = {k for k, out in enumerate(out_keys) if out in final_keys}
                        module_name = _module_name(entry.name)
                        child, outs = self._build_model(child_spec, path + (entry.name,),
                                                        f"{prefix}{module_name}.", values, child_final)
                        child.output_layouts = [v.layout for v in outs]
                        graph.add_module(module_name, child)
                        names = (module_name,)
                    else:
                        outs = self._run_meta(graph, names, values)
                else:
                    if names is None:
                        # the output softmax is split off a layer called once (a shared one keeps it)
                        is_output = out_keys[0] in final_keys and len(entry.calls) == 1
                        names = self._add_layer(graph, spec, entry, values, path, prefix, is_output, taken)
                    outs = self._run_meta(graph, names, values)
                    outs[0].flattened = self._flattened.get((id(graph), names[0]))
                env.update(zip(out_keys, outs, strict=True))
                graph.steps.append(Step(names, tuple(key(r) for r in refs), tuple(out_keys)))
        missing = [k for k in graph.output_keys if k not in env]
        if missing:
            raise ConvlensError(f"{self.file.source}: output {missing[0]} is never computed by the model's layers")
        return graph, [env[k] for k in graph.output_keys]

    def _output_count(self, entry: Entry) -> int:
        if entry.class_name in MODEL_CLASSES:
            return len(model_spec(entry.class_name, entry.config).outputs)
        return 1

    def _run_meta(self, graph: KerasGraph, names: tuple[str, ...], values: list[Value]) -> list[Value]:
        with torch.no_grad():
            out = graph._modules[names[0]](*[v.tensor for v in values])
            for name in names[1:]:
                out = graph._modules[name](out)
        outs = list(out) if isinstance(out, tuple) else [out]
        if isinstance(graph._modules[names[0]], KerasGraph):
            layouts = graph._modules[names[0]].output_layouts
        else:
            layouts = [values[0].layout if values and values[0].rank == 4 else self.layout] * len(outs)
        return [Value(t, layout if t.ndim == 4 else None) for t, layout in zip(outs, layouts, strict=True)]

    def _add_layer(self, graph: KerasGraph, spec: ModelSpec, entry: Entry, values: list[Value],
                   path: tuple[str, ...], prefix: str, is_output: bool, taken: set[str]) -> tuple[str, ...]:
        converter = CONVERTERS.get(entry.class_name)
        if converter is None:
            raise ConvlensError(f"unsupported layer {entry.name} (class {entry.class_name}): the Keras converter "
                                "does not know it (docs/keras-onnx.md lists the layers it converts)")
        self._spec = spec
        layer = Layer(entry.name, entry.class_name, entry.config, path + (entry.name,), is_output)
        with torch.device("meta"):
            try:
                converted: Converted = converter(layer, values, self)
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # a config this converter cannot read
                raise ConvlensError(f"layer {entry.name} ({entry.class_name}): its config is not one the Keras "
                                    f"converter reads ({exc.__class__.__name__}: {exc})") from None
            activation = converted.activation
            act_module = None
            if not (is_output and activation == "softmax"):
                act_module = activation_module(activation, layer, self)
        main_name = _module_name(entry.name)
        main = converted.module if converted.module is not None else (act_module or nn.Identity())
        if converted.module is None:
            act_module = None
        graph.add_module(main_name, main.eval())
        for name, tensor in converted.state.items():
            self.state[f"{prefix}{main_name}.{name}"] = tensor
        names = [main_name]
        if is_output and activation == "softmax":
            self.output_activation = "softmax"
        elif is_output and activation == "sigmoid" and self._width(main, values) == 1:
            self.output_activation = "sigmoid"
            act_module = km.BinaryLogits()  # softmax of [0, z] is [1 - sigmoid(z), sigmoid(z)]
        if act_module is not None:
            act_name = _free_name(f"{main_name}_{activation if isinstance(activation, str) else 'activation'}",
                                  taken)
            graph.add_module(act_name, act_module.eval())
            names.append(act_name)
        if converted.flattened is not None:
            self._flattened[(id(graph), main_name)] = converted.flattened
        return tuple(names)

    @staticmethod
    def _width(module: nn.Module, values: list[Value]) -> int:
        with torch.no_grad():
            out = module(*[v.tensor for v in values])
        return out.shape[1] if out.ndim >= 2 else 0

    # ---- what converters ask for --------------------------------------------------------------------------
    def weight_node(self, layer: Layer) -> WeightNode | None:
        return self.file.layer_weights(layer.path)

    def weights(self, layer: Layer, wanted: list[tuple[str, tuple]]) -> list:
        """The layer's arrays, checked against the shapes the architecture needs (``wanted``: name, shape)."""
        node = self.weight_node(layer)
        arrays = node.arrays if node is not None else []
        source = self.file.source
        needs = ", ".join(f"{name} {tuple(shape)}" for name, shape in wanted)
        if not arrays:
            raise ConvlensError(f"{source}: layer {layer.name} ({layer.class_name}) has no weights in the weights "
                                f"file; the architecture needs {needs}")
        if len(arrays) != len(wanted):
            found = ", ".join(str(tuple(a.shape)) for a in arrays)
            raise ConvlensError(f"{source}: weights do not fit the architecture: layer {layer.name} has "
                                f"{len(arrays)} arrays ({found}) in the weights file, the architecture needs {needs}")
        for (name, shape), array in zip(wanted, arrays, strict=True):
            if tuple(array.shape) != tuple(shape):
                raise ConvlensError(f"{source}: weights do not fit the architecture: layer {layer.name} {name} has "
                                    f"shape {tuple(array.shape)} in the weights file, the architecture needs "
                                    f"{tuple(shape)}")
        return arrays

    def feeds_dense_only(self, layer: Layer) -> bool:
        """Whether the layer's output reaches only Dense layers (through Dropout-like ones), so the Dense
        weights can take a Flatten's channels-last order."""
        spec = self._spec
        pending, seen = [f"{layer.name}:0:0"], set()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            if spec is None or current in {key(r) for r in spec.outputs}:
                return False
            for consumer in spec.consumers.get(current, []):
                if consumer.class_name in PASSTHROUGH:
                    pending += [f"{consumer.name}:{i}:0" for i in range(len(consumer.calls))]
                elif consumer.class_name != "Dense":
                    return False
        return True


def _free_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _check_allowed(entry: Entry) -> None:
    if entry.class_name in CODE_LAYERS:
        raise ConvlensError(f"layer {entry.name} is a {entry.class_name} layer: loading it would run Python code "
                            "stored in the model file, which convlens refuses; rebuild the model without it")
    # Keras 3 records where a class comes from: built-ins live in ``keras.*``; registered custom classes are
    # named ``package>Class``.
    custom_module = entry.module is not None and not entry.module.startswith("keras")
    if custom_module or ">" in (entry.registered_name or ""):
        raise ConvlensError(f"layer {entry.name} is a custom object ({entry.registered_name or entry.class_name}, "
                            f"module {entry.module}): loading it would run code from the model file, which "
                            "convlens refuses")
