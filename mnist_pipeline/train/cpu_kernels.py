"""The CPU arithmetic TensorFlow runs, fixed before it loads, so every x86-64 CPU with AVX2 gives the same bytes.

TensorFlow ships two sets of CPU kernels for convolutions, pooling and matrix products: its own (Eigen) and
oneDNN's. Left to itself it turns oneDNN on only on CPUs with AVX-512 neural-network features, and oneDNN
then runs AVX-512 code: both round differently from what an AVX2-only CPU computes. Its thread pools default
to one thread per core, and a sum split over another number of threads rounds differently too. So nothing
here is left to the CPU or to the environment:

- oneDNN's instruction set is capped at AVX2 (`ONEDNN_MAX_CPU_ISA`), on every CPU;
- oneDNN is on or off as `train.cpu_kernels` says (`eigen`, the default, is what an AVX2 CPU picks by
  itself; `onednn` made the `cnn-fast` preset's epochs 1.38x faster on an AVX2-only CPU);
- the intra- and inter-op thread counts are `train.cpu_threads` for training, and `INFERENCE_THREADS`
  for every other process (evaluate, predict-sample, `mnist-predict`, `mnist-serve`).

TensorFlow reads the first two once, when it loads: `mnist_pipeline.train.tensorflow_runtime`, the one module
that imports TensorFlow, applies the choice first. A value the user set in the environment is overwritten.
This module imports nothing of TensorFlow.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ONEDNN_SWITCH = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_ISA = "ONEDNN_MAX_CPU_ISA"
ISA = "AVX2"  # the widest instruction set every CPU this project reproduces on has
# What each `train.cpu_kernels` value (config.CPU_KERNELS) sets TF_ENABLE_ONEDNN_OPTS to.
_SWITCH_VALUES = {"onednn": "1", "eigen": "0"}
# Thread counts of the processes that only predict: the two of this project's reference machines, whose
# committed metrics they reproduce.
INFERENCE_THREADS = 2
# The CPU features whose code paths the committed bytes came from.
REQUIRED_FEATURES = ("avx2", "fma")


@dataclass(frozen=True)
class CpuChoice:
    kernels: str
    threads: int


INFERENCE = CpuChoice(kernels="eigen", threads=INFERENCE_THREADS)
_chosen: CpuChoice | None = None


def tensorflow_loaded() -> bool:
    return "tensorflow" in sys.modules


def choose(kernels: str, threads: int) -> bool:
    """Fix this process's kernels and thread counts; False when TensorFlow started already with other kernels.

    Call it before anything imports TensorFlow: a stage reads params first, then loads TensorFlow.
    """
    global _chosen
    if tensorflow_loaded():  # it has read the variables, whatever they were
        return os.environ.get(ONEDNN_SWITCH) == _SWITCH_VALUES[kernels]
    _chosen = CpuChoice(kernels, threads)
    os.environ[ONEDNN_ISA] = ISA
    os.environ[ONEDNN_SWITCH] = _SWITCH_VALUES[kernels]
    return True


def chosen() -> CpuChoice:
    """What `choose` set in this process; the inference choice where nothing did (it is set then)."""
    if _chosen is None:
        choose(INFERENCE.kernels, INFERENCE.threads)
    return _chosen or INFERENCE


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them; None where they cannot be read (another OS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def reproduces_reference_bytes() -> bool | None:
    """True on an x86-64 CPU with AVX2 and FMA, False where it cannot match them, None where unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    if flags is None:
        return None
    return all(feature in flags for feature in REQUIRED_FEATURES)


def describe_cpu() -> str:
    """One line for reports: the machine and the features the reference bytes depend on."""
    flags = cpu_flags() or frozenset()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{platform.machine()} CPU with {', '.join(shown) or 'no AVX2/FMA/AVX-512 flags readable'}"


def bytes_warning() -> str | None:
    """The line train prints on a CPU whose bytes will differ from the committed ones; None where they match."""
    if reproduces_reference_bytes() is False:
        return (f"this {describe_cpu()} computes other bytes than x86-64 CPUs with AVX2 and FMA: models and "
                "metrics will differ from the committed dvc.lock in their last digits")
    return None
