"""The bytes a run produces depend on params, code and data only: not on the environment or the core count.

TensorFlow reads oneDNN's switch (TF_ENABLE_ONEDNN_OPTS) and instruction-set cap (ONEDNN_MAX_CPU_ISA) from
the environment, and sizes its thread pools by the cores it may use; each changes how sums are rounded.
The train stage runs in a real project with each of those set otherwise, and must write the same model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import Project, make_project

pytestmark = pytest.mark.slow

# A small CNN: its convolutions and matrix products are the ops whose kernels oneDNN replaces.
SMALL_CNN = {"model.type": "cnn", "model.cnn.filters": [4, 8], "model.cnn.dense": 16, "train.cpu_threads": 2}
HOSTILE_ENVIRONMENTS = {
    "onednn-on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "onednn-off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "isa-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "TF_ENABLE_ONEDNN_OPTS": "1"},
    "isa-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("cpu-bytes") / "repo", mirror_root, SMALL_CNN)
    project.repro("preprocess")
    return project


def train_md5(project: Project, run: str, extra_env: dict[str, str], prefix: tuple[str, ...] = ()) -> str:
    """The train stage's command into its own folders; the model's md5."""
    env = {k: v for k, v in project.env.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    out = f"runs/{run}"
    project.run(*prefix, "python", "-m", "stages.train", "--", "data/prepared", f"{out}/models", f"{out}/live",
                f"{out}/train.json", env={**env, **extra_env})
    return hashlib.md5((project.path / out / "models" / "model.keras").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def clean_md5(project: Project) -> str:
    return train_md5(project, "clean", {})


@pytest.mark.parametrize("name", HOSTILE_ENVIRONMENTS)
def test_onednn_variables_in_the_users_environment_do_not_change_the_model(
    project: Project, clean_md5: str, name: str
) -> None:
    assert train_md5(project, name, HOSTILE_ENVIRONMENTS[name]) == clean_md5


def test_one_core_gives_the_same_model_as_all_cores(project: Project, clean_md5: str) -> None:
    """TensorFlow sizes its pools by the cores it may use; the thread counts come from params instead."""
    assert len(os.sched_getaffinity(0)) >= 2, "needs two cores to offer TensorFlow fewer of them"
    assert train_md5(project, "one-core", {}, prefix=("taskset", "-c", "0")) == clean_md5
