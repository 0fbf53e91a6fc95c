"""Expose each batch row's output length from a Piper VITS export, so batched audio can be trimmed.

Piper's export takes a batch (`input` [B, T], `input_lengths` [B]) but returns one tensor padded to
the longest row, with no per-row length. Inside the graph VITS computes exactly that length:
`y_lengths = clamp_min(sum(ceil(durations)), 1)`, in frames, so a row's audio is
`y_lengths[row] * hop` samples. We find that node (Ceil -> ReduceSum -> Clip, or Max in
older exports) and add its output to the graph's outputs; nothing else changes, so unbatched
results are the same as from the untouched model.
"""

from __future__ import annotations

from pathlib import Path

import onnx

LENGTHS_OUTPUT_OPS = ("Clip", "Max")


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
