"""Write the keyword-spotting DS-CNN as TFLite models, the fixtures of
`convgen import MODEL.tflite`: tests/fixtures/ds_cnn_int8.tflite (full
integer quantization, int8 input and output, per-channel weights: what a
TFLite Micro user has) and tests/fixtures/ds_cnn_float.tflite; and a small
residual block, tests/fixtures/residual_int8.tflite (a convolution, ADD of
the input, ReLU, max pooling, a dense layer on the 4x4x16 map flattened),
for the ops the DS-CNN lacks.

The network is ARM's ML-KWS DS-CNN (small): a 10x4 convolution, stride 2,
SAME padding, to 64 channels; four depthwise-separable blocks (3x3
depthwise, 1x1 pointwise, each with batch norm and ReLU); a 25x5 average
pool; a 12-way dense layer. Weights are random (seeded), batch norms given
random statistics; the int8 model is calibrated on 100 random inputs.

    python scripts/make_tflite_ds_cnn.py [tests/fixtures]

Needs tensorflow-cpu (not a convgen dependency: install it in a venv of its
own, `pip install tensorflow-cpu`); the fixtures are committed, so the tests
do not need it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf


def ds_cnn() -> tf.keras.Model:
    layers = tf.keras.layers
    x = inputs = layers.Input((49, 10, 1), batch_size=1, name="mfcc")

    def bn_relu(t, name):
        t = layers.BatchNormalization(name=f"{name}_bn")(t)
        return layers.ReLU(name=f"{name}_relu")(t)
    x = bn_relu(layers.Conv2D(64, (10, 4), strides=2, padding="same", use_bias=False, name="conv1")(x), "conv1")
    for k in range(1, 5):
        x = bn_relu(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{k}")(x), f"dw{k}")
        x = bn_relu(layers.Conv2D(64, 1, use_bias=False, name=f"pw{k}")(x), f"pw{k}")
    x = layers.AveragePooling2D((25, 5), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(12, name="fc")(x)
    return tf.keras.Model(inputs, outputs, name="ds_cnn")


def residual_block() -> tf.keras.Model:
    layers = tf.keras.layers
    x = inputs = layers.Input((8, 8, 16), batch_size=1, name="features")
    y = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    y = layers.Conv2D(16, 3, padding="same", name="conv2")(y)
    y = layers.ReLU(name="relu")(layers.Add(name="add")([x, y]))
    y = layers.MaxPooling2D(2, name="pool")(y)
    outputs = layers.Dense(10, name="fc")(layers.Flatten(name="flatten")(y))
    return tf.keras.Model(inputs, outputs, name="residual")


def int8_model(model: tf.keras.Model, samples: list[np.ndarray]) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def randomise_batchnorms(model: tf.keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights([0.5 + rng.random(size), 0.2 * rng.standard_normal(size),
                               0.2 * rng.standard_normal(size), 0.5 + rng.random(size)])


def main(folder: str = "tests/fixtures") -> int:
    tf.keras.utils.set_random_seed(0)
    model = ds_cnn()
    randomise_batchnorms(model, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    samples = [rng.normal(0, 1, (1, 49, 10, 1)).astype(np.float32) for _ in range(100)]
    block = residual_block()
    block_samples = [rng.normal(0, 1, (1, 8, 8, 16)).astype(np.float32) for _ in range(100)]
    models = {"ds_cnn_float.tflite": tf.lite.TFLiteConverter.from_keras_model(model).convert(),
              "ds_cnn_int8.tflite": int8_model(model, samples),
              "residual_int8.tflite": int8_model(block, block_samples)}
    for name, data in models.items():
        path = Path(folder) / name
        path.write_bytes(data)
        print(f"wrote {path} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
