"""`train.cpu_kernels` reaches TensorFlow: the train stage chooses its CPU kernels before TensorFlow loads.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import, and says in its native log when oneDNN's
operations are on (the stage shows that log with MNIST_PIPELINE_TF_LOG=1). The train stage runs by hand on
a small CNN in a real project, once per setting, into its own folders.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from conftest import Project, make_project

pytestmark = pytest.mark.slow

ONEDNN_ON = "oneDNN custom operations are on"
# run name: the stage's completed process and its model's md5
Runs = dict[str, tuple[subprocess.CompletedProcess[str], str]]
SMALL_CNN = {"model.type": "cnn", "model.cnn.filters": [4, 8], "model.cnn.dense": 16, "train.cpu_threads": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("kernels") / "repo", mirror_root, SMALL_CNN)
    project.repro("preprocess")
    return project


def train_with(project: Project, kernels: str, run: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """The train stage's command with `train.cpu_kernels` set, TensorFlow's log shown; the model's md5."""
    project.set_params({"train.cpu_kernels": kernels})
    out = f"runs/{run}"
    result = project.run("python", "-m", "stages.train", "data/prepared", f"{out}/models", f"{out}/live",
                         f"{out}/train.json", env={**project.env, "MNIST_PIPELINE_TF_LOG": "1"})
    return result, hashlib.md5((project.path / out / "models" / "model.keras").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(project: Project) -> Runs:
    """Three trainings both tests read: oneDNN twice, Eigen once."""
    return {run: train_with(project, kernels, run)
            for run, kernels in (("onednn", "onednn"), ("onednn-again", "onednn"), ("eigen", "eigen"))}


def test_onednn_kernels_are_on_when_chosen_and_off_for_eigen(runs: Runs) -> None:
    assert ONEDNN_ON in runs["onednn"][0].stderr
    assert ONEDNN_ON not in runs["eigen"][0].stderr


def test_each_kernel_choice_gives_the_same_bytes_again_and_the_two_differ(runs: Runs) -> None:
    """Reproducible within a choice; a different arithmetic across them, which is why it is a param train reruns on."""
    assert runs["onednn"][1] == runs["onednn-again"][1]
    assert runs["eigen"][1] != runs["onednn"][1]
