"""A small node-by-node ONNX graph builder for convolutional classifiers (numpy + onnx only).

BatchNorm is folded into the preceding convolution in float64, which matters when running
variances are exactly zero and the whole scale comes from eps.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class MissingWeight(KeyError):
    pass


class GraphBuilder:
    def __init__(self, state_dict: dict[str, np.ndarray]):
        self.weights = state_dict
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise MissingWeight(f"state dict lacks {name!r}")
        self.used.add(name)
        return np.asarray(self.weights[name])

    def unused(self) -> list[str]:
        return sorted(
            k for k in self.weights if k not in self.used and not k.endswith("num_batches_tracked")
        )

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(
        self,
        x: str,
        conv: str,
        bn: str,
        *,
        stride: int,
        pads: list[int],
        groups: int = 1,
        eps: float,
    ) -> str:
        """Conv (no bias) followed by eval-mode BatchNorm, folded into one Conv with bias."""
        w = self.weight(f"{conv}.weight").astype(np.float64)
        gamma = self.weight(f"{bn}.weight").astype(np.float64)
        beta = self.weight(f"{bn}.bias").astype(np.float64)
        mean = self.weight(f"{bn}.running_mean").astype(np.float64)
        var = self.weight(f"{bn}.running_var").astype(np.float64)
        scale = gamma / np.sqrt(var + eps)
        folded_w = (w * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        k = w.shape[2:]
        return self.node(
            "Conv",
            [x, self.constant(f"{conv}.w", folded_w), self.constant(f"{conv}.b", folded_b)],
            conv,
            kernel_shape=list(k),
            strides=[stride, stride],
            pads=pads,
            group=groups,
        )

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], "relu")

    def relu6(self, x: str) -> str:
        lo = self.constant("zero", np.array(0.0, dtype=np.float32))
        hi = self.constant("six", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, lo, hi], "relu6")

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b], "add")

    def max_pool(self, x: str, *, kernel: int, stride: int, pad: int) -> str:
        return self.node(
            "MaxPool", [x], "maxpool", kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pad] * 4
        )

    def classifier_head(self, x: str, fc: str) -> str:
        """Global average pool, flatten, then the fully connected layer, as the final logits."""
        pooled = self.node("GlobalAveragePool", [x], "gap")
        flat = self.node("Flatten", [pooled], "flatten", axis=1)
        w = self.constant(f"{fc}.w", self.weight(f"{fc}.weight").astype(np.float32))
        b = self.constant(f"{fc}.b", self.weight(f"{fc}.bias").astype(np.float32))
        self.nodes.append(
            helper.make_node("Gemm", [flat, w, b], [OUTPUT_NAME], name=fc, transB=1)
        )
        return OUTPUT_NAME

    def model(self, name: str, input_shape: list, num_classes: int) -> onnx.ModelProto:
        leftover = self.unused()
        if leftover:
            raise ValueError(f"{len(leftover)} weights not used by the graph, e.g. {leftover[:3]}")
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", num_classes])],
            self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imgrec-tools"
        )
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model
