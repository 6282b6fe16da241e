"""The training-loop variants compared in docs/performance.md, each on the tutorial's model and full MNIST.

    python benchmarks/loop_variants.py VARIANT [SEED]      (env: THREADS=inter,intra  UNROLL=k  DIRECTLOSS=1)

VARIANT: fit (the tutorial's fit), spe<N> (fit with steps_per_execution=N), loop (Keras' own
train_step in a whole-epoch tf.function loop), stepxla (that step under XLA), lean (our step:
forward, compute_loss, optimizer.apply, accuracy as a loop value), leanxla (lean under XLA),
loopxla (the whole epoch loop under XLA: did not finish within 200 s on 2 CPU cores). Prints the fit's wall and
CPU seconds, test accuracy, and the CPU seconds of each epoch (loop variants). CPU time is the
steadier measure when other work shares the machine. docs/performance.md has the results.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images


def main() -> None:
    mirror = Path(os.environ.get("DATASET_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    folder = mirror / "mnist"
    x_train = scale_images(read_idx(folder / "train-images-idx3-ubyte.gz", "images"), 255.0, 0.5)
    y_train = read_idx(folder / "train-labels-idx1-ubyte.gz", "labels")
    x_test = scale_images(read_idx(folder / "t10k-images-idx3-ubyte.gz", "images"), 255.0, 0.5)
    y_test = read_idx(folder / "t10k-labels-idx1-ubyte.gz", "labels")
    from mnist_pipeline.train.tensorflow_runtime import keras, tf

    if threads := os.environ.get("THREADS"):
        inter, intra = map(int, threads.split(","))
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    variant, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    targets = np.eye(10, dtype=np.float32)[y_train]
    started, cpu = time.perf_counter(), time.process_time()
    epoch_cpu: list[float] = []
    if variant == "fit":
        model.fit(x_train, targets, epochs=5, batch_size=32, verbose=0)
    elif variant.startswith("spe"):
        model.steps_per_execution = int(variant[3:])
        model.fit(x_train, targets, epochs=5, batch_size=32, verbose=0)
    else:
        bs, n = 32, len(x_train)
        steps = n // bs
        x, y = tf.constant(x_train), tf.constant(targets)
        pred = model(x[:bs], training=False)  # build loss, metrics and optimizer outside the loop
        model.compute_loss(x[:bs], y[:bs], pred)
        model.compute_metrics(x[:bs], y[:bs], pred, None)
        model.reset_metrics()
        model.optimizer.build(model.trainable_variables)

        def lean(data: tuple) -> tuple:
            xb, yb = data
            with tf.GradientTape() as tape:
                yp = model(xb, training=True)
                if os.environ.get("DIRECTLOSS"):
                    loss = tf.reduce_mean(keras.losses.categorical_crossentropy(yb, yp))
                else:
                    loss = model.compute_loss(xb, yb, yp, training=True)
            model.optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss, tf.reduce_sum(tf.cast(tf.equal(tf.argmax(yp, 1), tf.argmax(yb, 1)), tf.float32))

        step = {"lean": lean, "leanxla": tf.function(lean, jit_compile=True),
                "stepxla": tf.function(model.train_step, jit_compile=True)}.get(variant, model.train_step)
        unroll = int(os.environ.get("UNROLL", "1"))

        @tf.function(jit_compile=variant == "loopxla")
        def epoch(order: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> None:
            batches = tf.reshape(order[: steps // unroll * unroll * bs], (steps // unroll, unroll, bs))
            for i in tf.range(steps // unroll):
                for k in range(unroll):
                    idx = batches[i, k]
                    step((tf.gather(x, idx), tf.gather(y, idx)))

        rng = np.random.default_rng(seed)
        for _ in range(5):
            epoch_started = time.process_time()
            model.reset_metrics()
            epoch(tf.constant(rng.permutation(n).astype(np.int32)), x, y)
            epoch_cpu.append(time.process_time() - epoch_started)
    fit_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    accuracy = float((model.predict(x_test, batch_size=1000, verbose=0).argmax(1) == y_test).mean())
    print(f"{variant} seed={seed} fit={fit_s:.2f}s cpu={cpu_s:.2f}s acc={accuracy:.4f} "
          f"epoch_cpu={[round(t, 2) for t in epoch_cpu]}")


if __name__ == "__main__":
    main()
