"""Keras layers for IR ops: one layer instance per op (or per weight group).

The same factory serves the whole-detector builder and the single-op micro-models, so a
micro-model times exactly the op the detector contains.
"""

from __future__ import annotations

from typing import Any

import keras

from mnasfpn.ir.ops import Shape

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999


@keras.saving.register_keras_serializable(package="mnasfpn")
class ConvBN(keras.layers.Layer):
    """Conv or depthwise conv, then optional BN and ReLU6: one CONV_2D /
    DEPTHWISE_CONV_2D op once the converter has folded BN and fused the activation."""

    def __init__(
        self,
        filters: int,
        kernel: int,
        stride: int = 1,
        act: str = "none",
        batchnorm: bool = True,
        bias: bool = False,
        depthwise: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_ = {
            "filters": filters, "kernel": kernel, "stride": stride, "act": act,
            "batchnorm": batchnorm, "bias": bias, "depthwise": depthwise,
        }  # fmt: skip
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                kernel, strides=stride, padding="same", use_bias=bias, name="depthwise"
            )
        else:
            self.conv = keras.layers.Conv2D(
                filters, kernel, strides=stride, padding="same", use_bias=bias, name="conv"
            )
        self.bn = (
            keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn")
            if batchnorm
            else None
        )
        self.act = keras.layers.ReLU(6.0, name="relu6") if act == "relu6" else None
        if act not in ("none", "relu6"):
            raise ValueError(f"unsupported activation {act!r}")

    def build(self, input_shape: Any) -> None:
        self.conv.build(input_shape)
        out_shape = self.conv.compute_output_shape(input_shape)
        if self.bn is not None:
            self.bn.build(out_shape)
        super().build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y, training=training)
        if self.act is not None:
            y = self.act(y)
        return y

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.config_}


@keras.saving.register_keras_serializable(package="mnasfpn")
class AddAct(keras.layers.Layer):
    """Sum of inputs with an optional ReLU6 (the converter fuses it into the ADD)."""

    def __init__(self, act: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.act_name = act

    def call(self, inputs: list[Any]) -> Any:
        y = keras.ops.add(inputs[0], inputs[1])
        return keras.ops.relu6(y) if self.act_name == "relu6" else y

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "act": self.act_name}


def make_layer(
    op_type: str,
    *,
    in_shapes: tuple[Shape, ...],
    out_shape: Shape,
    kernel: int = 1,
    stride: int = 1,
    act: str = "none",
    batchnorm: bool = False,
    bias: bool = True,
    name: str | None = None,
) -> keras.layers.Layer:
    """The Keras layer that becomes exactly one TFLite op of `op_type`."""
    if op_type == "conv2d":
        return ConvBN(out_shape[2], kernel, stride, act, batchnorm, bias, name=name)
    if op_type == "dwconv2d":
        return ConvBN(out_shape[2], kernel, stride, act, batchnorm, bias, depthwise=True,
                      name=name)  # fmt: skip
    if op_type == "maxpool":
        return keras.layers.MaxPooling2D(kernel, strides=stride, padding="same", name=name)
    if op_type == "resize_nearest":
        return keras.layers.Resizing(out_shape[0], out_shape[1], interpolation="nearest",
                                     name=name)  # fmt: skip
    if op_type == "add":
        return AddAct(act, name=name)
    if op_type == "mul":
        return keras.layers.Multiply(name=name)
    if op_type == "mean":
        return keras.layers.GlobalAveragePooling2D(keepdims=True, name=name)
    if op_type == "sigmoid":
        return keras.layers.Activation("sigmoid", name=name)
    if op_type == "reshape":
        return keras.layers.Reshape(out_shape, name=name)
    if op_type == "concat":
        return keras.layers.Concatenate(axis=1, name=name)
    raise ValueError(f"no Keras layer for op type {op_type!r}")
