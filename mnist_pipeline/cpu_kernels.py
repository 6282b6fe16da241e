"""Which CPU kernels TensorFlow runs, chosen before it loads: it reads the choice once, when it starts.

TensorFlow ships two sets of CPU kernels for convolutions, pooling and matrix products: its own (Eigen) and
oneDNN's. It turns oneDNN on by itself only on CPUs with AVX-512 neural-network features (VNNI, BF16,
AMX); on others, such as AVX2-only AMD EPYCs, its own kernels run, and the `cnn-fast` preset's epochs
took 1.38 times as long with them on this project's machine (docs/performance.md). The environment
variable TF_ENABLE_ONEDNN_OPTS overrides that choice, but only if it is set before TensorFlow's import,
hence this module without TensorFlow.
The two sets round differently, so the choice is a param (`train.cpu_kernels`) that reruns train.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "TF_ENABLE_ONEDNN_OPTS"
# `train.cpu_kernels` values; "auto" leaves TensorFlow's own choice, and the environment, as they are.
CPU_KERNELS = ("auto", "onednn", "eigen")
_ENV_VALUES = {"onednn": "1", "eigen": "0"}


def choose_cpu_kernels(kernels: str) -> bool:
    """Set TensorFlow's kernel choice for this process; False when it started already with another one.

    Call it before anything imports TensorFlow: a stage reads params first, then loads TensorFlow.
    """
    if kernels == "auto":
        return True
    value = _ENV_VALUES[kernels]
    if "tensorflow" in sys.modules:  # started: it has read the variable, whatever it was
        return os.environ.get(ENV_VAR) == value
    os.environ[ENV_VAR] = value
    return True
