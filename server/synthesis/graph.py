"""Expose each batch row's output length from a Piper VITS export, so batched audio can be trimmed.

Piper's export takes a batch (`input` [B, T], `input_lengths` [B]) but returns one tensor padded to
the longest row, with no per-row length. Inside the graph VITS computes exactly that length:
`y_lengths = clamp_min(sum(ceil(durations)), 1)`, in frames, so a row's audio is
`y_lengths[row] * hop` samples. We find that node (Ceil -> ReduceSum -> Clip, or Max in
older exports) and add its output to the graph's outputs; nothing else changes, so unbatched
results are the same as from the untouched model.

`find_cuts` and `split` cut the same graph into three parts for windowed synthesis (see
`windows`): the text encoder and duration predictor (ids -> z_p, frame mask, per-id frame counts),
the reverse flow (z_p -> z) and the HiFi-GAN decoder (z -> samples). The flow and decoder are
convolutions with bounded receptive fields over frames, so they can run on windows of frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import onnx
import onnx.utils

LENGTHS_OUTPUT_OPS: Final = ("Clip", "Max")
SPEAKER_INPUT: Final = "sid"


def with_lengths_output(model: Path) -> tuple[bytes, str | None]:
    """The model's bytes with the per-row frame count as an extra output, and that output's name.

    The name is None when the graph does not have the expected shape (an export we do not know);
    the bytes are then the untouched model, which still serves unbatched requests.
    """
    proto = onnx.load(str(model))
    name = _lengths_tensor(proto.graph)
    if name is not None and name not in {output.name for output in proto.graph.output}:
        # A float tensor: the clamp runs on the sum of float durations, before any cast.
        lengths = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        proto.graph.output.append(lengths)
    return proto.SerializeToString(), name


def _lengths_tensor(graph: onnx.GraphProto) -> str | None:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)

    def only_consumer(tensor: str, ops: tuple[str, ...]) -> onnx.NodeProto | None:
        found = [node for node in consumers.get(tensor, []) if node.op_type in ops]
        return found[0] if len(found) == 1 else None

    ceils = [node for node in graph.node if node.op_type == "Ceil"]
    if len(ceils) != 1:  # VITS rounds durations up exactly once
        return None
    total = only_consumer(ceils[0].output[0], ("ReduceSum",))
    if total is None:
        return None
    clamp = only_consumer(total.output[0], LENGTHS_OUTPUT_OPS)
    return None if clamp is None else clamp.output[0]


@dataclass(frozen=True)
class Cuts:
    """The tensors where a VITS graph is cut into encoder, flow and decoder parts."""

    z_p: str  # [B, C, frames]: prior latents with the noise drawn (flow input)
    mask: str  # [B, 1, frames]: the frame mask (flow input)
    durations: str  # [B, 1, ids]: frames per phoneme id, the duration Ceil
    lengths: str  # [B]: frames per row
    decoder_input: str  # [B, C, frames]: z times the mask, the input of the decoder


@dataclass(frozen=True)
class Parts:
    """A VITS graph as three serialized models (see `split`)."""

    encoder: bytes  # graph inputs -> z_p, mask, durations, lengths
    flow: bytes  # z_p, mask (, sid) -> decoder input
    decoder: bytes  # decoder input (, sid) -> audio
    speaker_input: str | None  # the speaker id input, where the voice has several speakers


def find_cuts(graph: onnx.GraphProto) -> Cuts | None:
    """Find the cut tensors by the graph's structure (op types and data flow), not by names.

    VITS inference is: durations = Ceil(...) over phonemes; frames are expanded from them; the one
    RandomNormalLike downstream of the Ceil draws the prior noise, and the Add it feeds is z_p;
    the frame mask is the one tensor from the lengths that the flow (z_p's descendants) consumes;
    the decoder input is the last product of the mask: nothing after it reads the mask again.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    ceils = [node for node in graph.node if node.op_type == "Ceil"]
    lengths = _lengths_tensor(graph)
    if len(ceils) != 1 or lengths is None:
        return None
    after_ceil = _descendants(consumers, ceils[0].output[0])
    noise = [node for node in after_ceil if node.op_type == "RandomNormalLike"]
    if len(noise) != 1:
        return None
    node = noise[0]
    for _ in range(8):  # noise * exp(logs_p) * noise_scale + m_p: a short single-consumer chain
        nexts = consumers.get(node.output[0], [])
        if len(nexts) != 1:
            return None
        node = nexts[0]
        if node.op_type == "Add":
            break
    else:
        return None
    z_p = node.output[0]
    flow = _descendants(consumers, z_p)
    produced = {tensor for node in flow for tensor in node.output}
    from_lengths = {tensor for node in _descendants(consumers, lengths) for tensor in node.output}
    masks = {
        tensor
        for node in flow
        for tensor in node.input
        if tensor not in produced and tensor != z_p and tensor in from_lengths
    }
    if len(masks) != 1:
        return None
    (mask,) = masks
    last = []
    for node in flow:
        if node.op_type != "Mul" or mask not in node.input:
            continue
        later = _descendants(consumers, node.output[0])
        if not any(mask in other.input for other in later):
            last.append(node)
    if len(last) != 1:
        return None
    return Cuts(z_p, mask, ceils[0].output[0], lengths, last[0].output[0])


def split(model: onnx.ModelProto, cuts: Cuts) -> Parts:
    """Extract the three parts; raises where the graph cannot be cut there (the caller falls back)."""
    inputs = [value.name for value in model.graph.input]
    speaker = next((name for name in inputs if name == SPEAKER_INPUT), None)
    extra = [speaker] if speaker else []
    known = {value.name for value in model.graph.value_info}
    for name in (cuts.z_p, cuts.mask, cuts.durations, cuts.lengths, cuts.decoder_input):
        if name not in known:  # the extractor needs a declared type at every new boundary
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    extractor = onnx.utils.Extractor(model)
    encoder = extractor.extract_model(inputs, [cuts.z_p, cuts.mask, cuts.durations, cuts.lengths])
    flow = extractor.extract_model([cuts.z_p, cuts.mask, *extra], [cuts.decoder_input])
    decoder = extractor.extract_model([cuts.decoder_input, *extra], [model.graph.output[0].name])
    return Parts(encoder.SerializeToString(), flow.SerializeToString(), decoder.SerializeToString(), speaker)


def _descendants(consumers: dict[str, list[onnx.NodeProto]], tensor: str) -> list[onnx.NodeProto]:
    seen: set[int] = set()
    found: list[onnx.NodeProto] = []
    stack = [tensor]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if id(node) not in seen:
                seen.add(id(node))
                found.append(node)
                stack.extend(node.output)
    return found
