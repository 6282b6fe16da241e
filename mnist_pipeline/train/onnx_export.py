"""Write the trained model as ONNX, the file every inference command reads, so none of them loads TensorFlow.

Keras exports through tf2onnx. What is exported is the inference graph alone: layers that act only in
training (dropout, random augmentation) are left out, since tf2onnx would keep their random ops and ONNX
Runtime has no kernels for them. tf2onnx names tensors and nodes after process-wide counters, so the
graph is renamed in order (t0, n0, ...) and stripped of its doc strings: equal weights give equal bytes.
Before the file is moved into place, ONNX Runtime runs it on the images the train stage has, and its
answers must be Keras' own.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import atomic_path
from mnist_pipeline.prepared import read_rows
from mnist_pipeline.train.tensorflow_runtime import keras, tf

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
# Fixed, so the file does not change with the exporting process: names that say what wrote it, no version.
PRODUCER = "mnist_pipeline"
GRAPH_NAME = "classifier"
OPSET = 15
# Layers that change the data in training only: identity at inference, so the exported graph skips them.
TRAINING_ONLY = (keras.layers.Dropout, keras.layers.RandomTranslation, keras.layers.RandomRotation)
# Images the exported model is checked on: enough to cover many shapes of digit, few enough that the
# check costs seconds, not a share of training.
CHECK_IMAGES = 10_000
CHECK_BATCH = 1000


def inference_model(model: keras.Model) -> keras.Model:
    """The model's layers less the training-only ones, as a functional model sharing the same weights."""
    images = keras.Input(shape=model.input_shape[1:], name=INPUT_NAME)
    x = images
    for layer in model.layers:
        if not isinstance(layer, TRAINING_ONLY):
            x = layer(x)
    return keras.Model(images, x, name=GRAPH_NAME)


def canonical(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rename every tensor and node in graph order and drop what depends on the exporting process.

    Names are given in the order nodes use them, and the weights are listed in that order too: tf2onnx
    lists them by its own counter-based names, an order that changes from one process to the next."""
    graph = proto.graph
    (graph_input,), (graph_output,) = graph.input, graph.output
    names = {graph_input.name: INPUT_NAME, graph_output.name: OUTPUT_NAME}

    def rename(name: str) -> str:
        if not name:
            return name  # an omitted optional input
        return names.setdefault(name, f"t{len(names) - 2}")

    for i, node in enumerate(graph.node):
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = f"n{i}_{node.op_type}"
        node.doc_string = ""
    weights = sorted(graph.initializer, key=lambda t: int(rename(t.name)[1:]))
    for tensor in weights:
        tensor.name = rename(tensor.name)
        tensor.doc_string = ""
    graph.ClearField("initializer")
    graph.initializer.extend(weights)
    graph_input.name, graph_output.name = INPUT_NAME, OUTPUT_NAME
    for value in (graph_input, graph_output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
        value.doc_string = ""
    del graph.value_info[:]
    graph.name, graph.doc_string = GRAPH_NAME, ""
    proto.producer_name, proto.producer_version, proto.doc_string, proto.domain = PRODUCER, "", "", ""
    proto.model_version = 0
    del proto.metadata_props[:]
    return proto


def to_onnx(model: keras.Model) -> bytes:
    """The inference graph of `model` as canonical ONNX bytes."""
    import onnx

    inference = inference_model(model)
    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    with tempfile.TemporaryDirectory(prefix="mnist-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch asks numpy for np.object
            inference.export(str(path), format="onnx", verbose=False, input_signature=signature, opset_version=OPSET)
        proto = onnx.load_model(str(path))
    return canonical(proto).SerializeToString(deterministic=True)


def largest_difference(model: keras.Model, data: bytes, images: np.ndarray, name: str = "model.onnx") -> float:
    """ONNX Runtime's probabilities against Keras' on `images`: the largest difference, once every image's
    most likely class is the same; a PipelineError naming the file `name` would have been when one is not."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    largest = 0.0
    for start in range(0, len(images), CHECK_BATCH):
        batch = read_rows(images, start, start + CHECK_BATCH)
        expected = np.asarray(model(batch, training=False))
        found = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        differ = np.flatnonzero(expected.argmax(axis=1) != found.argmax(axis=1))
        if len(differ):
            i = int(differ[0])
            raise PipelineError(
                f"{name}: image {start + i}: ONNX Runtime predicts class {int(found[i].argmax())}, Keras "
                f"{int(expected[i].argmax())} ({len(differ)} of {len(batch)} images in rows {start}-"
                f"{start + len(batch) - 1} differ): the export is not the trained model; nothing was written")
        largest = max(largest, float(np.abs(expected - found).max(initial=0.0)))
    return largest


def check_images(x_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """The validation images when there are some, else the first CHECK_IMAGES training images: the train stage
    does not read the test set (it would rerun on any change of it), so the check uses what it has."""
    chosen = x_val if len(x_val) else x_train
    return read_rows(chosen, 0, CHECK_IMAGES) if len(chosen) > CHECK_IMAGES else np.asarray(chosen)


def export_checked(model: keras.Model, images: np.ndarray, name: str = "model.onnx") -> tuple[bytes, float]:
    """The ONNX bytes of `model`, checked on `images`, and the largest probability difference found."""
    data = to_onnx(model)
    return data, largest_difference(model, data, images, name)


def save_onnx(data: bytes, path: str | os.PathLike[str]) -> None:
    """Written aside and renamed: a failure leaves no half-written model.onnx."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
