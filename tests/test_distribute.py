"""tf.distribute strategies: TF_CONFIG parsing, the chief rule, and a real two-worker training on 127.0.0.1.

The two-worker test starts two Python processes that find each other through TF_CONFIG on
loopback ports, train the tutorial MLP on real MNIST with `model.fit` under
MultiWorkerMirroredStrategy, and let only the chief save. Worker 1 is seeded differently, so two
independent trainings (a model built outside `strategy.scope()`) would disagree; a one-process
`default` run at the same global batch must reach the same weights: that is what "train.batch_size
is the global batch" buys.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import PROJECT_ROOT, subprocess_env

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.train.distribute import (
    TF_CONFIG_ENV,
    check_batch_size,
    is_chief,
    make_strategy,
    read_tf_config,
)


def tf_config(cluster: dict[str, list[str]], kind: str, index: int) -> dict[str, str]:
    return {TF_CONFIG_ENV: json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


TWO_WORKERS = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
WITH_CHIEF = {"chief": ["127.0.0.1:2221"], "worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}


def test_no_tf_config_means_a_lone_process_that_is_its_own_chief() -> None:
    assert read_tf_config({}) is None
    assert is_chief({}) is True
    assert is_chief({TF_CONFIG_ENV: "  "}) is True


@pytest.mark.parametrize(
    ("cluster", "kind", "index", "chief"),
    [
        (TWO_WORKERS, "worker", 0, True),
        (TWO_WORKERS, "worker", 1, False),
        (WITH_CHIEF, "chief", 0, True),
        (WITH_CHIEF, "worker", 0, False),  # a chief exists, so worker 0 is an ordinary worker
        (WITH_CHIEF, "worker", 1, False),
    ],
)
def test_is_chief(cluster: dict[str, list[str]], kind: str, index: int, chief: bool) -> None:
    assert is_chief(tf_config(cluster, kind, index)) is chief


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"task": {"type": "worker", "index": 0}}', "'cluster' must be"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "cluster.worker"),
        ('{"cluster": {"worker": ["h:1"]}}', "'task' must be"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', "task.type 'chief'"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}', "task.index 2"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}', "task.index '0'"),
    ],
)
def test_malformed_tf_config_is_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(PipelineError) as error:
        is_chief({TF_CONFIG_ENV: text})
    message = str(error.value)
    assert message.startswith(f"{TF_CONFIG_ENV}: ") and says in message and "\n" not in message


def test_multi_worker_without_tf_config_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TF_CONFIG_ENV, raising=False)
    with pytest.raises(PipelineError, match=r"multi_worker needs the cluster in \$TF_CONFIG"):
        make_strategy("multi_worker")


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(PipelineError, match="expected one of default, mirrored, multi_worker"):
        make_strategy("horovod")


def test_default_is_one_replica_and_mirrored_is_one_per_local_gpu() -> None:
    from mnist_pipeline.train.tensorflow_runtime import tf

    assert make_strategy("default").num_replicas_in_sync == 1
    # Every local GPU, or the CPU alone when there is none.
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert make_strategy("mirrored").num_replicas_in_sync == max(gpus, 1)


def test_batch_size_is_global_and_must_split_evenly() -> None:
    two_replicas = SimpleNamespace(num_replicas_in_sync=2)
    assert check_batch_size(32, two_replicas) == 16
    with pytest.raises(PipelineError, match=r"train\.batch_size = 33 is the global batch"):
        check_batch_size(33, two_replicas)


# One process of the cluster: the project's own model, optimizer and deterministic save.
WORKER_SCRIPT = '''
import json, sys
from pathlib import Path

from mnist_pipeline.train.distribute import check_batch_size, is_chief, make_strategy

mirror, out_dir, strategy_name, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
strategy = make_strategy(strategy_name)  # first: MultiWorkerMirroredStrategy must precede other TF ops

from mnist_pipeline.train.tensorflow_runtime import keras
from mnist_pipeline.train.tensorflow_runtime import tf

from mnist_pipeline.sources.splits import scale_images
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.train.models import make_optimizer, save_model_deterministic
from mnist_pipeline.train.model_types.mlp import build_mlp

keras.utils.set_random_seed(seed)
tf.config.experimental.enable_op_determinism()
images = read_idx(mirror / "mnist" / "train-images-idx3-ubyte.gz", "images")[:N_IMAGES]
labels = read_idx(mirror / "mnist" / "train-labels-idx1-ubyte.gz", "labels")[:N_IMAGES]
x, y = scale_images(images, 255.0, 0.5), keras.utils.to_categorical(labels, 10)
check_batch_size(GLOBAL_BATCH, strategy)
with strategy.scope():
    model = build_mlp([64, 64], "relu", 0.0, 784, 10)
    model.compile(optimizer=make_optimizer("adam", 1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, epochs=1, batch_size=GLOBAL_BATCH, verbose=0, shuffle=False)  # the seed draws weights only
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"][-1]}), flush=True)
if is_chief():
    save_model_deterministic(model, out_dir / "model.keras")
'''
N_IMAGES = 2000
GLOBAL_BATCH = 32
TIMEOUT_S = 300


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; all are held open together, so they are distinct."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_worker(script: Path, mirror: Path, out_dir: Path, strategy: str, env: dict[str, str],
                 seed: int = 0) -> subprocess.Popen:
    out_dir.mkdir()
    process_env = subprocess_env(PYTHONPATH=str(PROJECT_ROOT))
    process_env.pop(TF_CONFIG_ENV, None)  # only the cluster we give, never one from the caller's shell
    return subprocess.Popen(
        [sys.executable, str(script), str(mirror), str(out_dir), strategy, str(seed)],
        cwd=PROJECT_ROOT, env={**process_env, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen) -> dict[str, float]:
    """Wait for the process; a worker stuck waiting for a dead peer is killed and fails the test."""
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"worker still running after {TIMEOUT_S} s\n{stderr[-3000:]}")
    assert process.returncode == 0, f"worker exited {process.returncode}\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def saved_weights(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        arrays: dict[str, np.ndarray] = {}
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_two_workers_on_loopback_train_and_only_the_chief_saves(tmp_path: Path, mirror_root: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(f"N_IMAGES = {N_IMAGES}\nGLOBAL_BATCH = {GLOBAL_BATCH}\n{WORKER_SCRIPT}")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    outs = [tmp_path / "worker0", tmp_path / "worker1"]
    # Worker 1 draws other initial weights: only a cluster that really syncs (variables made in
    # strategy.scope() start from the chief's values, gradients are all-reduced) still agrees with worker 0
    # and with one process; two independent trainings would not.
    workers = [
        start_worker(script, mirror_root, outs[i], "multi_worker", tf_config(cluster, "worker", i), seed=i)
        for i in (0, 1)
    ]
    try:
        reports = [finish(worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()

    assert [r["replicas"] for r in reports] == [2, 2]
    # The loss is all-reduced across workers: equal values show they trained as one.
    assert reports[0]["loss"] == reports[1]["loss"]
    assert sorted(p.name for p in outs[0].iterdir()) == ["model.keras"]
    assert list(outs[1].iterdir()) == [], "a non-chief worker wrote outputs"

    from mnist_pipeline.core.datasets import DATASETS
    from mnist_pipeline.prepared import idx_spec
    from mnist_pipeline.sources.idx import read_idx
    from mnist_pipeline.sources.splits import scale_images
    from mnist_pipeline.train.models import load_model

    model = load_model(outs[0] / "model.keras", idx_spec(DATASETS["mnist"]))
    x_test = scale_images(read_idx(mirror_root / "mnist" / "t10k-images-idx3-ubyte.gz", "images")[:1000], 255.0, 0.5)
    y_test = read_idx(mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz", "labels")[:1000]
    accuracy = float((model.predict(x_test, verbose=0).argmax(axis=1) == y_test).mean())
    assert accuracy > 0.5, f"test accuracy {accuracy:.3f} (chance is 0.1): the cluster did not learn"

    # One process at the same GLOBAL batch takes the same steps on the same images: same weights,
    # up to the order in which the all-reduce sums floats.
    single = start_worker(script, mirror_root, tmp_path / "single", "default", {})
    assert finish(single)["loss"] == pytest.approx(reports[0]["loss"], abs=1e-6)
    distributed, alone = saved_weights(outs[0] / "model.keras"), saved_weights(tmp_path / "single" / "model.keras")
    assert distributed.keys() == alone.keys()
    for name in distributed:
        np.testing.assert_allclose(distributed[name], alone[name], atol=1e-6, err_msg=name)


# What the train stage prints under a strategy: its own line, then Keras' fit line per epoch (verbose=2).
REPLICAS_LINE = re.compile(r"^train: strategy (\S+), (\d+) replicas in sync$", re.MULTILINE)
EPOCH_LINE = re.compile(r"^\d+/\d+ - .*? - loss: ([0-9.e+-]+)", re.MULTILINE)
STAGE_EPOCHS = 2


@pytest.mark.slow
def test_train_stage_as_two_workers_trains_two_replicas_in_step_and_only_the_chief_writes(
    tmp_path: Path, mirror_root: Path
) -> None:
    """The real train stage (`train.strategy: multi_worker`) in two processes on loopback ports.

    Seen from outside, in each worker's own output: both report 2 replicas in sync, and both print
    the same loss for every epoch (the all-reduced loss: two independent trainings on different
    shards would not agree), which is also the loss the chief logs with dvclive.
    """
    import shutil

    from conftest import make_project

    params = {"train.strategy": "multi_worker", "train.epochs": STAGE_EPOCHS}
    project = make_project(tmp_path / "chief", mirror_root, params)
    project.dvc("repro", "preprocess")
    # The other worker has the same code, params and prepared data, as after `dvc pull data/prepared`.
    other = tmp_path / "worker1"
    shutil.copytree(project.path, other, ignore=shutil.ignore_patterns(".dvc", ".git"))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = [sys.executable, "-m", "stages.train", "data/prepared", "models", "metrics/train", "metrics/train.json"]
    env = {k: v for k, v in project.env.items() if k != TF_CONFIG_ENV}
    workers = [
        subprocess.Popen(command, cwd=cwd, env={**env, **tf_config(cluster, "worker", i)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, cwd in enumerate((project.path, other))
    ]
    outputs = []
    try:
        for worker in workers:
            try:
                stdout, stderr = worker.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                stdout, stderr = worker.communicate()
            assert worker.returncode == 0, f"worker exited {worker.returncode}\n{stderr[-3000:]}"
            outputs.append(stdout + stderr)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()

    for i, output in enumerate(outputs):
        assert REPLICAS_LINE.findall(output) == [("multi_worker", "2")], f"worker {i}:\n{output[-3000:]}"
    losses = [EPOCH_LINE.findall(output) for output in outputs]
    assert len(losses[0]) == STAGE_EPOCHS, outputs[0][-3000:]
    assert losses[1] == losses[0], f"per-epoch losses differ: worker 0 {losses[0]}, worker 1 {losses[1]}"
    with open(project.path / "metrics/train/plots/metrics/train/loss.tsv", newline="") as f:
        logged_losses = [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]
    assert [f"{v:.4f}" for v in logged_losses] == losses[0]  # as Keras prints them

    assert (project.path / "models" / "model.keras").is_file()
    assert (project.path / "models" / "model.weights.h5").is_file()
    logged = json.loads((project.path / "metrics" / "train" / "metrics.json").read_text())
    assert logged["train"]["accuracy"] > 0.2, logged  # chance is 0.1
    assert not (other / "models").exists(), "a non-chief worker wrote a model"
    assert not (other / "metrics" / "train").exists(), "a non-chief worker wrote training logs"
