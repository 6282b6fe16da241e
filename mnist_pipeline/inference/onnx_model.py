"""The trained model as ONNX Runtime runs it: what evaluate, predict-sample, mnist-predict and mnist-serve call.

The train stage writes models/model.onnx beside the Keras file; reading it needs onnxruntime and numpy
only, so no inference command pays TensorFlow's seconds of import or its gigabyte of memory.
The session's options are fixed here, in one place:
- one thread per op, and ops one after another: a sum split over a machine's own thread count rounds
  differently, so a result would depend on the core count; these models take milliseconds per image;
- graph optimisations up to "extended" (constant folding, fusions), not "all": the last level adds the
  NCHWc layout, whose block size is the CPU's vector width (8 floats with AVX2, 16 with AVX-512), so
  convolutions would sum in another order on another CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, open_regular
from mnist_pipeline.prepared import read_rows

DEFAULT_MODEL = "models/model.onnx"
# A model file larger than this is refused unread: the project's models are a few MB at most.
MAX_MODEL_BYTES = 512 << 20
# Images per session run: memory for this many bytes of input at a time, whatever the split's size.
WINDOW_BYTES = 64 << 20

onnxruntime.set_default_logger_severity(3)  # its warnings are about graph rewrites, not the user's input


def session_options() -> onnxruntime.SessionOptions:
    """The fixed options the module docstring explains."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy wait on shared cores
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX Runtime session on a model from flattened float32 images to class probabilities."""

    session: Any
    input_name: str
    output_name: str
    n_pixels: int
    n_classes: int

    def probabilities(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (float32) of `images` (rows of n_pixels float32, in memory or memory-mapped),
        `batch_size` rows per run (default: about WINDOW_BYTES of them), read with `read_rows`: memory holds
        one batch whatever the number of images. Each image's answer is the same whatever the batch size."""
        span = batch_size or max(1, WINDOW_BYTES // (4 * self.n_pixels))
        parts = [self._run(read_rows(images, start, start + span)) for start in range(0, len(images), span)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_classes), np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch.reshape(len(batch), -1), dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def _dims(arg: Any) -> tuple[Any, ...]:
    return tuple(d if isinstance(d, int) else None for d in arg.shape)


def load_model(path: str | os.PathLike[str], n_pixels: int, n_classes: int) -> OnnxModel:
    """Open the ONNX model at `path` for images of `n_pixels` and `n_classes` classes; each fault is one
    PipelineError line naming the file and what was expected."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run the train stage: dvc repro train)") from None
    except NotRegularFile as e:
        raise PipelineError(f"{path}: not a regular file ({e.kind}): expected an ONNX model file") from None
    except OSError as e:  # a symbolic link loop, a path through a file, no permission
        raise PipelineError(f"{path}: cannot open: {(e.strerror or str(e)).lower()}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise PipelineError(f"{path}: larger than {MAX_MODEL_BYTES >> 20} MiB: expected the train stage's model.onnx")
    try:
        session = onnxruntime.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a bad file; all mean the same to a user
        text = " ".join(str(e).split())
        raise PipelineError(f"{path}: not a loadable ONNX model ({len(data)} bytes: {text[:200]}); expected the "
                            "train stage's model.onnx (dvc repro train)") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shapes = ([_dims(a) for a in inputs], [_dims(a) for a in outputs])
    if len(inputs) != 1 or len(outputs) != 1 or shapes != ([(None, n_pixels)], [(None, n_classes)]):
        raise PipelineError(f"{path}: expected a model from (batch, {n_pixels}) images to (batch, {n_classes}) class "
                            f"probabilities, found inputs {shapes[0]} and outputs {shapes[1]}")
    if inputs[0].type != "tensor(float)":
        raise PipelineError(f"{path}: expected float32 images as input, found {inputs[0].type}")
    return OnnxModel(session, inputs[0].name, outputs[0].name, n_pixels, n_classes)
