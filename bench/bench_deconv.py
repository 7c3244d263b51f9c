"""Deconvnet / guided backprop / gradient projections of one neuron against Captum's neuron attributions.

convlens ``project_activations`` (the work of ``convlens deconv --position max`` once the neuron is known)
against Captum's ``NeuronDeconvolution``, ``NeuronGuidedBackprop`` and ``NeuronGradient`` on the same layer,
neuron and batch. Both must agree first: convlens feeds the activation itself down, Captum a one, so each
image's projection is Captum's attribution times that image's activation. Models: random-init vgg16 at 224
(``features.29``, the last ReLU, in place) and the baseline CNN at 128 px on leaf images (``relu3``); the neuron
is the first image's strongest. No ratio target was set for these; the numbers show where convlens stands.
"""

from __future__ import annotations

import torch

from bench.harness import BenchCase
from bench.inputs import LEAF, baseline_on_leaf, random_torchvision
from convlens.zeiler.deconv import project_and_measure

CAPTUM = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop", "gradient": "NeuronGradient"}


def _vgg16(batch: int):
    return *random_torchvision("vgg16", 224, batch, input_seed=1), "features.29"


def _baseline_leaf(batch: int):
    return *baseline_on_leaf(batch), "relu3"


def _strongest_neuron(model, inputs: torch.Tensor, layer: str) -> tuple[int, tuple[int, int]]:
    """The first image's strongest unit of ``layer`` and where it peaks (a random-init unit may be dead)."""
    from convlens.zeiler.deconv import strongest_position, strongest_units, unit_activations

    activations = unit_activations(model, inputs[:1], layer)[0]
    unit = strongest_units(activations, 1)[0]
    return unit, strongest_position(activations[unit])


def _case(label: str, model, inputs, layer: str, rule: str, note: str) -> BenchCase:
    import captum.attr

    unit, position = _strongest_neuron(model, inputs, layer)
    note = f"{note}, unit {unit} at {position}"
    batch = len(inputs)
    peer = getattr(captum.attr, CAPTUM[rule])(model, model.get_submodule(layer))

    def ours():
        return project_and_measure(model, inputs, layer, [unit] * batch, [position] * batch, rule, layer_calls=1)

    def theirs():
        return peer.attribute(inputs, (unit, *position)).detach()

    def check(result, attribution):
        projections, fed = result
        expected = attribution.cpu() * fed.view(-1, 1, 1, 1)
        scale = float(expected.abs().max())
        if scale == 0 or not torch.allclose(projections, expected, rtol=1e-3, atol=1e-4 * scale):
            raise AssertionError(f"{rule} projection differs from Captum {CAPTUM[rule]} x activation")

    return BenchCase(f"deconv {rule} {label} b{batch}", ours, theirs, f"Captum {CAPTUM[rule]}", check=check,
                     note=note)


def cases(quick: bool) -> list[BenchCase]:
    result = []
    vgg = _vgg16(1)
    for rule in CAPTUM:
        result.append(_case("vgg16 224 features.29", *vgg, rule, "random init"))
    if not quick:
        result.append(_case("vgg16 224 features.29", *_vgg16(16), "deconvnet", "random init"))
        result[-1].repetitions = 2
    leaf = _baseline_leaf(16)
    where = "leaf validation images" if LEAF.is_dir() else "skimage coffee (leaf data absent)"
    for rule in CAPTUM:
        result.append(_case("baseline 128 relu3", *leaf, rule, f"random init, {where}"))
    return result
