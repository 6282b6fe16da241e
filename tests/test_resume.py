"""A train stage killed outright resumes under `dvc repro` and ends with the bytes of a run never killed.

Real processes in real DVC projects (tests/conftest.py make_project): the first 1,000 images of real
MNIST (900 to train, 100 to validate), 4 epochs of the MLP or 3 of a small CNN with batch
normalisation, dropout and random shifts. The kill lands at a chosen epoch every time without
sleeping: the `dvc repro train` under test runs with a `sitecustomize` (PAUSE_HOOK, on PYTHONPATH)
whose audit hook, in the train stage's process only, waits at the n-th rename onto a checkpoint file
(or onto the model), announces the process id on a FIFO and blocks there. The test then sends
SIGKILL, which no code can catch: what the killed run leaves is exactly what a kill leaves.

The kill at the n-th checkpoint rename stops a run whose epoch n is trained and checkpointed to a
temporary file, but not yet in place: the checkpoint of epoch n-1 is the last one, so the next
`dvc repro` resumes at epoch n.

The first tests are quick, in this process: the sweep of temporary files, and each kind of damaged
checkpoint on a small Keras model.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, make_project

from mnist_pipeline.core.files import sweep_leftovers
from mnist_pipeline.train.checkpoint import Checkpoints, capture

MLP_EPOCHS = 4
BASE_PARAMS = {"preprocess.val_size": 100, "train.epochs": MLP_EPOCHS}
CNN_PARAMS = {
    "model.type": "cnn",
    "model.cnn.filters": [4, 8],
    "model.cnn.dense": 16,
    "model.cnn.batch_norm": True,
    "model.cnn.augment_shift": 0.1,
    "train.epochs": 3,
}
CHECKPOINTS = Path(".cache") / "train-checkpoints"
CHECKPOINT_NAME = r"train-[0-9a-f]+\.npz"
# What the train stage writes; all of it must come out byte-identical.
OUTPUTS = ("models/model.keras", "models/model.weights.h5", "metrics/train", "metrics/train.json")

PAUSE_ENV = "TEST_PAUSE_RENAME"  # "<file name regex>:<n>:<fifo path>", read by PAUSE_HOOK only
PAUSE_HOOK = '''\
"""Stops the train stage (never dvc, which loads this file too) at its n-th rename onto a file whose
name matches a pattern: announces its pid on a FIFO, then blocks until the test kills it."""
import os, re, sys

_setting = os.environ.get("TEST_PAUSE_RENAME")
if _setting and "stages.train" in sys.orig_argv:
    _pattern, _count, _fifo = _setting.split(":", 2)
    _seen = []

    def _hook(event, args):
        if event != "os.rename" or not re.fullmatch(_pattern, os.path.basename(os.fsdecode(args[1]))):
            return
        _seen.append(args)
        if len(_seen) == int(_count):
            with open(_fifo, "w") as f:  # blocks until the test opens the FIFO to read
                f.write(f"{os.getpid()}\\n")
            with open(_fifo):  # no writer ever comes: blocks until SIGKILL
                pass

    sys.addaudithook(_hook)
'''


def test_sweep_removes_only_the_temporaries_of_the_named_outputs(tmp_path: Path) -> None:
    """What atomic_path and atomic_dir leave when killed outright goes; other outputs' temporaries,
    and look-alike names, stay."""
    models, metrics = tmp_path / "models", tmp_path / "metrics"
    stale = [models / ".tmp-0123456789ab-model.keras", metrics / ".tmp-old-0123456789ab-train",
             metrics / ".tmp-k2_x9q0a-train"]
    kept = [models / "model.keras", models / ".tmp-0123456789ab-model.weights.h5", metrics / ".tmp-train",
            metrics / ".tmp-0123456789ab-train.json", metrics / "train" / "metrics.json"]
    for path in [*stale, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith("-train"):
            (path / "plots").mkdir(parents=True)
            (path / "plots" / "loss.tsv").write_text("step\tloss\n")
        else:
            path.write_text("x")
    removed = sweep_leftovers(models / "model.keras", metrics / "train", tmp_path / "absent" / "file")
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def small_model(width: int = 8):  # type: ignore[no-untyped-def]
    """A compiled Dense model with dropout (a seed generator) and a built Adam, as a fresh process has it."""
    from mnist_pipeline.train.tensorflow_runtime import keras
    from mnist_pipeline.train.training import make_deterministic

    make_deterministic(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    return model


def trained_checkpoint(folder: Path) -> tuple[Checkpoints, dict[str, np.ndarray], dict]:
    """A checkpoint after one epoch of a small model; the variables it holds, and the Generator's state."""
    from mnist_pipeline.train.tensorflow_runtime import keras

    model = small_model()
    x = np.random.default_rng(1).random((32, 4), dtype=np.float32)
    model.fit(x, np.eye(3, dtype=np.float32)[np.arange(32) % 3], epochs=1, verbose=0)
    keras.random.normal((2,))  # an unseeded op: Keras' global SeedGenerator now exists and has moved
    rng = np.random.default_rng(5)
    rng.permutation(10)
    checkpoints = Checkpoints(folder / "train-0123.npz")
    checkpoints.save(capture(model, rng, 1, {"loss": [0.5], "accuracy": [0.25]}))
    checkpoints.wait()  # written on a helper thread
    saved = {v.path: v.numpy() for v in [*model.variables, *model.optimizer.variables]}
    return checkpoints, saved, rng.bit_generator.state


def test_checkpoint_restores_every_variable_and_the_generators(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from keras.src.backend.common import global_state

    checkpoints, saved, shuffle = trained_checkpoint(tmp_path)
    global_seed = np.array(global_state.get_global_attribute("global_seed_generator").state.numpy())
    model, rng = small_model(), np.random.default_rng(5)  # a fresh process: new weights, no global generator
    state = checkpoints.resume(model, rng, epochs=3)
    assert state is not None and state.epoch == 1 and state.history == {"loss": [0.5], "accuracy": [0.25]}
    assert capsys.readouterr().err == f"train: resuming at epoch 2/3 from {checkpoints.path}\n"
    restored = {v.path: v.numpy() for v in [*model.variables, *model.optimizer.variables]}
    assert sorted(restored) == sorted(saved) and any("seed_generator" in name for name in saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert rng.bit_generator.state == shuffle
    np.testing.assert_array_equal(global_state.get_global_attribute("global_seed_generator").state.numpy(),
                                  global_seed)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the stored arrays, not the zip directory at the end
    path.write_bytes(bytes(data))


def into_a_folder(path: Path) -> None:
    path.unlink()
    (path / "inside").mkdir(parents=True)


DAMAGE = {
    "flipped byte": (flip_a_byte, "unreadable: BadZipFile: Bad CRC-32 for file"),
    "empty file": (lambda p: p.write_bytes(b""), "unreadable: EOFError: No data left in file"),
    "a folder": (into_a_folder, "not a regular file"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_one_line_and_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    damage: str) -> None:
    checkpoints, _, _ = trained_checkpoint(tmp_path)
    harm, reason = DAMAGE[damage]
    harm(checkpoints.path)
    model = small_model()
    before = [v.numpy() for v in model.variables]
    assert checkpoints.resume(model, np.random.default_rng(5), epochs=3) is None
    line = capsys.readouterr().err
    assert line.startswith(f"train: ignoring a damaged checkpoint ({checkpoints.path}: {reason}")
    assert line.endswith("): starting from epoch 1\n") and line.count("\n") == 1
    assert not checkpoints.path.exists()  # gone: the next epoch writes a new one
    for old, new in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(new.numpy(), old)  # the fresh model is untouched


def test_checkpoint_of_another_model_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints, _, _ = trained_checkpoint(tmp_path)
    model = small_model(width=16)
    before = [v.numpy() for v in model.variables]
    assert checkpoints.resume(model, np.random.default_rng(5), epochs=3) is None
    line = capsys.readouterr().err
    assert line.startswith(
        f"train: ignoring a damaged checkpoint ({checkpoints.path}: its variables do not fit this model (first "
        "difference: ")
    assert line.endswith(")): starting from epoch 1\n") and line.count("\n") == 1
    for old, new in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(new.numpy(), old)


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resume-hook")
    (folder / "sitecustomize.py").write_text(PAUSE_HOOK)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    """A project whose download and preprocess stages ran (dvc.lock records them); tests train in copies."""
    project = make_project(tmp_path_factory.mktemp("resume") / "base", mirror_root, BASE_PARAMS)
    with (project.path / ".gitignore").open("a") as f:
        f.write(".cache/\n")  # as the project's own .gitignore
    assert project.repro("preprocess") == ["download", "preprocess"]
    project.commit("prepared")
    return project


def copy_of(project: Project, path: Path, params: dict | None = None) -> Project:
    shutil.copytree(project.path, path, symlinks=True)
    copy = Project(path, None)
    copy.env = dict(project.env)
    if params:
        copy.set_params(params)
    return copy


def train_outputs(project: Project) -> dict[str, bytes]:
    """Every file the train stage wrote, by path: the model, its weights, dvclive's folder, the summary."""
    found = {}
    for name in OUTPUTS:
        path = project.path / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found.update({p.relative_to(project.path).as_posix(): p.read_bytes() for p in files})
    return found


def repro_train(project: Project) -> str:
    """`dvc repro train` to the end; its output (the stage's lines are on stderr)."""
    result = project.dvc("repro", "train")
    assert "Running stage 'train'" in result.stdout + result.stderr
    return result.stdout + result.stderr


def kill_at_rename(project: Project, hook_dir: Path, name_pattern: str, count: int) -> None:
    """`dvc repro train`, its stage process SIGKILLed when about to rename onto its `count`-th file
    matching `name_pattern`."""
    fifo = project.path.parent / f"{project.path.name}.fifo"
    os.mkfifo(fifo)
    env = {**project.env, PAUSE_ENV: f"{name_pattern}:{count}:{fifo}", "PYTHONPATH": str(hook_dir)}
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=project.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    announced = b""
    try:
        for _ in range(900):  # up to 15 minutes of 1-second waits on a loaded machine, then fail
            if announced.endswith(b"\n"):
                break
            ready, _, _ = select.select([reader], [], [], 1.0)
            if ready:
                announced += os.read(reader, 4096)
            elif proc.poll() is not None:
                pytest.fail(f"dvc repro train exited {proc.returncode} before the pause:\n{proc.stdout.read()}")
        else:
            pytest.fail("the train stage never reached the pause")
        os.kill(int(announced), signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output  # the stage died: dvc says it failed and records nothing
    assert "Traceback" not in output


def leftovers(project: Project) -> list[str]:
    """Temporary files of interrupted writes anywhere in the project (DVC's and git's own folders aside)."""
    return sorted(p.relative_to(project.path).as_posix() for p in project.path.rglob(".tmp-*")
                  if not {".dvc", ".git"} & set(p.relative_to(project.path).parts))


def checkpoint_files(project: Project) -> list[str]:
    folder = project.path / CHECKPOINTS
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def mlp_reference(prepared: Project, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The MLP's outputs from a run never interrupted."""
    project = copy_of(prepared, tmp_path_factory.mktemp("mlp-reference") / "p")
    output = repro_train(project)
    assert "resuming" not in output
    assert checkpoint_files(project) == []  # a finished run removes its checkpoint
    return train_outputs(project)


@pytest.fixture(scope="module")
def mlp_killed(prepared: Project, hook_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The MLP run killed at epoch 3 of 4: epoch 3's checkpoint written, not yet renamed into place."""
    project = copy_of(prepared, tmp_path_factory.mktemp("mlp-killed") / "p")
    kill_at_rename(project, hook_dir, CHECKPOINT_NAME, 3)
    return project


@pytest.mark.slow
def test_mlp_killed_at_an_epoch_resumes_there_to_the_same_bytes(
        mlp_killed: Project, mlp_reference: dict[str, bytes], tmp_path: Path) -> None:
    project = copy_of(mlp_killed, tmp_path / "p")
    (checkpoint,) = [name for name in checkpoint_files(project) if not name.startswith(".tmp-")]
    # What the kill left: the checkpoint of epoch 2, epoch 3's unfinished one, dvclive's unfinished folder.
    assert [name for name in leftovers(project) if CHECKPOINTS.as_posix() in name] != []
    assert [name for name in leftovers(project) if name.startswith("metrics/.tmp-") and name.endswith("-train")]
    output = repro_train(project)
    resumed = [line for line in output.splitlines() if "resuming" in line]
    assert resumed == [f"train: resuming at epoch 3/{MLP_EPOCHS} from {CHECKPOINTS / checkpoint}"]
    assert re.findall(r"^epoch (\d)/", output, re.MULTILINE) == ["3", "4"]  # epochs 1-2 were not trained again
    assert train_outputs(project) == mlp_reference
    assert leftovers(project) == []  # the killed run's temporary files are gone
    assert checkpoint_files(project) == []


@pytest.mark.slow
def test_cnn_with_batch_norm_and_augmentation_killed_resumes_to_the_same_bytes(
        prepared: Project, hook_dir: Path, tmp_path: Path) -> None:
    """Batch-norm statistics, dropout's and the random shifts' seed-generator states, Adam's slots."""
    reference = copy_of(prepared, tmp_path / "reference", CNN_PARAMS)
    repro_train(reference)
    project = copy_of(prepared, tmp_path / "killed", CNN_PARAMS)
    kill_at_rename(project, hook_dir, CHECKPOINT_NAME, 2)
    output = repro_train(project)
    assert [line for line in output.splitlines() if line.startswith("train: resuming at epoch 2/3 from ")]
    assert train_outputs(project) == train_outputs(reference)
    assert leftovers(project) == [] and checkpoint_files(project) == []


@pytest.mark.slow
def test_killed_while_saving_the_model_resumes_after_the_last_epoch(
        prepared: Project, mlp_reference: dict[str, bytes], hook_dir: Path, tmp_path: Path) -> None:
    """Every epoch was checkpointed: the rerun trains nothing, writes the outputs, and removes the model's
    temporary file the kill left beside models/model.keras."""
    project = copy_of(prepared, tmp_path / "p")
    kill_at_rename(project, hook_dir, r"model\.keras", 1)
    assert [name for name in leftovers(project) if name.startswith("models/.tmp-")]
    output = repro_train(project)
    assert f"train: resuming after the last epoch ({MLP_EPOCHS}) from " in output
    assert not re.findall(r"^epoch \d/", output, re.MULTILINE)
    assert train_outputs(project) == mlp_reference
    assert leftovers(project) == [] and checkpoint_files(project) == []


@pytest.mark.slow
def test_checkpoint_of_other_params_is_never_used(
        prepared: Project, mlp_reference: dict[str, bytes], hook_dir: Path, tmp_path: Path) -> None:
    """Killed with another learning rate, rerun with the reference params: a fresh run, the reference's bytes."""
    project = copy_of(prepared, tmp_path / "p", {"train.learning_rate": 0.003})
    kill_at_rename(project, hook_dir, CHECKPOINT_NAME, 3)
    (other,) = [name for name in checkpoint_files(project) if not name.startswith(".tmp-")]
    project.set_params(BASE_PARAMS | {"train.learning_rate": 0.001})
    output = repro_train(project)
    assert "resuming" not in output and "damaged" not in output
    assert re.findall(r"^epoch (\d)/", output, re.MULTILINE) == ["1", "2", "3", "4"]
    assert train_outputs(project) == mlp_reference
    assert checkpoint_files(project) == [other]  # kept under its own key: those params may come back


@pytest.mark.slow
def test_truncated_checkpoint_is_one_line_and_a_fresh_start(
        prepared: Project, mlp_killed: Project, mlp_reference: dict[str, bytes], tmp_path: Path) -> None:
    project = copy_of(prepared, tmp_path / "p")
    (name,) = [n for n in checkpoint_files(mlp_killed) if not n.startswith(".tmp-")]  # same code, data, params
    whole = (mlp_killed.path / CHECKPOINTS / name).read_bytes()
    (project.path / CHECKPOINTS).mkdir(parents=True)
    (project.path / CHECKPOINTS / name).write_bytes(whole[: len(whole) // 2])
    output = repro_train(project)
    # Its own lines but the ONNX export's check (`train: model.onnx agrees ...`, printed on every run).
    lines = [line for line in output.splitlines() if line.startswith("train: ") and "model.onnx" not in line]
    assert len(lines) == 1, output
    reason = "unreadable: BadZipFile: File is not a zip file"
    assert lines[0] == f"train: ignoring a damaged checkpoint ({CHECKPOINTS / name}: {reason}): starting from epoch 1"
    assert re.findall(r"^epoch (\d)/", output, re.MULTILINE) == ["1", "2", "3", "4"]
    assert train_outputs(project) == mlp_reference
    assert checkpoint_files(project) == []


@pytest.mark.slow
def test_checkpoints_off_write_none(prepared: Project, hook_dir: Path, tmp_path: Path) -> None:
    """`train.checkpoint: false`: stopped after its last epoch, as it saves the model, the run has written
    no checkpoint (a finished run would have removed one anyway: only a stopped run can show it)."""
    project = copy_of(prepared, tmp_path / "p", {"train.checkpoint": False})
    kill_at_rename(project, hook_dir, r"model\.keras", 1)
    assert not (project.path / CHECKPOINTS).exists()
