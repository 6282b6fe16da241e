"""Pick a `tf.distribute` strategy by name, and tell which process of a cluster may write outputs.

We use TensorFlow's own engines rather than our own: `default` is one device, `mirrored` is
`MirroredStrategy` (every local GPU, or the CPU when there is none), `multi_worker` is
`MultiWorkerMirroredStrategy` over the cluster in the standard `TF_CONFIG` environment variable.

Batch size rule: `train.batch_size` is the GLOBAL batch, one optimizer step's worth of images
summed over all replicas; Keras splits it evenly (2 replicas at 32 train 16 images each). One
step therefore averages the same number of images under every strategy, so learning rates and
results compare across strategies. It must divide by the number of replicas (`check_batch_size`).

TF_CONFIG is parsed here without importing TensorFlow, so `is_chief()` stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mnist_pipeline.core.config import STRATEGIES
from mnist_pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from mnist_pipeline.train.tensorflow_runtime import tf

TF_CONFIG_ENV = "TF_CONFIG"
_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def read_tf_config(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The validated TF_CONFIG, or None when unset; a malformed one is a one-line PipelineError."""
    text = (os.environ if environ is None else environ).get(TF_CONFIG_ENV, "").strip()
    if not text:
        return None

    def bad(why: str) -> PipelineError:
        return PipelineError(f"{TF_CONFIG_ENV}: {why}; expected JSON like {_EXAMPLE}")

    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(config, dict):
        raise bad(f"expected a JSON object, got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad("'cluster' must be a non-empty object of job name -> list of 'host:port'")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0] for a in addresses
        ):
            raise bad(f"cluster.{job} must be a non-empty list of 'host:port' strings, got {addresses!r}")
    if not isinstance(task, dict):
        raise bad("'task' must be an object with 'type' and 'index'")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise bad(f"task.type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise bad(f"task.index {index!r} must be an integer in [0, {len(cluster[kind]) - 1}] for job {kind!r}")
    return config


def is_chief(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process writes outputs: the `chief` task, else worker 0; a lone process always."""
    config = read_tf_config(environ)
    if config is None:
        return True
    kind, index = config["task"]["type"], config["task"]["index"]
    if "chief" in config["cluster"]:
        return kind == "chief"
    return kind == "worker" and index == 0


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named by `train.strategy`. Create it before building models: multi_worker sets up collectives."""
    from mnist_pipeline.train.tensorflow_runtime import tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # No devices given: every visible GPU, or the CPU when there is none.
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if read_tf_config() is None:
            raise PipelineError(
                f"train.strategy = multi_worker needs the cluster in ${TF_CONFIG_ENV}, which is not set; "
                f"set it on every machine, e.g. {_EXAMPLE}"
            )
        return _keras_multi_worker_strategy()
    raise PipelineError(f"train.strategy = {name!r}: expected one of {', '.join(STRATEGIES)}")


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch for a global `batch_size`, which must split evenly across replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise PipelineError(
            f"params.yaml: train.batch_size = {batch_size} is the global batch and must divide evenly "
            f"among the {replicas} replicas of this strategy"
        )
    return batch_size // replicas


def _keras_multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy with a `reduce` that Keras 3's `fit` can call.

    Keras 3.15 calls `strategy.reduce("MEAN", (x, y), axis=None)` on a whole batch tuple before
    the first step, and `strategy.reduce("MEAN", scalar, axis=0)` on every metric after each
    step; with two or more workers TF rejects both (keras-team/keras#20585). Reducing each
    element on its own, over replicas only for scalars, is what both callers mean.
    """
    from mnist_pipeline.train.tensorflow_runtime import tf

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
            def reduce_one(v: Any) -> Any:
                rank = self.experimental_local_results(v)[0].shape.rank
                return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if rank == 0 else axis
                )

            return tf.nest.map_structure(reduce_one, value)

    return KerasMultiWorkerMirroredStrategy()
