"""The one-node ONNX model that turns a float16 tensor of any shape into float32, for the cloud's tails.

A tail takes float32; a request sent as `fp16` arrives as float16. Casting in ONNX Runtime is about ten times faster
than NumPy's cast on this CPU, and it runs on the whole batch at once, so the service casts there instead. The
model is committed (`splitrt/data/cast_f16_f32.onnx`) because the cloud installs without the `onnx` package; this
module (offline tooling, `pip install -e .[train]`) writes it again:

    python -m splitrt.partition.cast_model splitrt/data/cast_f16_f32.onnx
"""
from __future__ import annotations

import sys
from pathlib import Path

CAST_INPUT_NAME = "half"
CAST_OUTPUT_NAME = "single"


def cast_model_bytes() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", [CAST_INPUT_NAME], [CAST_OUTPUT_NAME], to=TensorProto.FLOAT)],
        "cast_f16_f32",
        [helper.make_tensor_value_info(CAST_INPUT_NAME, TensorProto.FLOAT16, None)],
        [helper.make_tensor_value_info(CAST_OUTPUT_NAME, TensorProto.FLOAT, None)],
    )
    # Any rank (no shape: onnx's checker would ask for one, ONNX Runtime does not). Opset 13 and IR 7: every onnxruntime the project supports (>= 1.17) loads it.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="splitrt")
    model.ir_version = 7
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m splitrt.partition.cast_model OUT.onnx", file=sys.stderr)
        return 2
    Path(args[0]).write_bytes(cast_model_bytes())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
