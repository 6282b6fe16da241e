"""The one door to TensorFlow: its CPU kernels and thread counts are fixed before it loads.

Every module of the project that uses TensorFlow or Keras imports them from here, so no process can
load TensorFlow with the CPU's or the environment's own choice (`mnist_pipeline.train.cpu_kernels` says why
that matters for the bytes). A process that trains calls `cpu_kernels.choose` with its params first;
any other gets the inference choice.
"""

from __future__ import annotations

from mnist_pipeline.train import cpu_kernels

cpu_kernels.chosen()  # before the imports below: TensorFlow reads the choice once, when it loads

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "set_threads", "tf"]


def set_threads(threads: int) -> bool:
    """TensorFlow's intra- and inter-op thread pools; False when its first op ran already with others."""
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (
        threads, threads
    ):
        return True
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


set_threads(cpu_kernels.chosen().threads)
