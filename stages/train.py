"""Stage train: fit the model described by params on the prepared training set."""


from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.files import atomic_dir, check_output_paths, save_json, sweep_leftovers
from mnist_pipeline.core.progress import say
from mnist_pipeline.prepared import load_spec, load_split, over_budget
from mnist_pipeline.train import cpu_kernels
from mnist_pipeline.train.checkpoint import CHECKPOINT_DIR, Checkpoints, digest_arrays_in_background, run_key
from mnist_pipeline.train.curves import plot_training_curves
from mnist_pipeline.train.distribute import is_chief
from mnist_pipeline.train.footprint import check_fits
from mnist_pipeline.train.registry import load_config
from mnist_pipeline.train.unused_params import ignored_changes


def main(prepared_dir: str, model_dir: str, live_dir: str, summary_path: str) -> None:
    cfg = load_config()
    # A file where a folder belongs (`models`, `.cache`) is one line now, not after every epoch.
    check_output_paths(f"{model_dir}/model.keras", f"{model_dir}/model.weights.h5", f"{model_dir}/model.onnx",
                       f"{live_dir}/curves.png",
                       summary_path, *([CHECKPOINT_DIR / "run"] if cfg.train.checkpoint else []))
    # Temporary files of a run killed outright (SIGKILL) go now, not hours later at the first write.
    sweep_leftovers(f"{model_dir}/model.keras", f"{model_dir}/model.weights.h5", f"{model_dir}/model.onnx", live_dir,
                    summary_path)
    for line in ignored_changes(cfg.model):  # a leftover of an earlier experiment, most likely
        say(f"train: warning: {line}")
    spec = load_spec(prepared_dir)
    check_fits(cfg.model, cfg.train, spec)  # before the data is read or TensorFlow builds anything
    # Past the memory budget the images stay on disk, memory-mapped, and training streams them: decided here, once.
    mapped = over_budget(cfg.train.memory_budget_mb, prepared_dir)
    x_train, y_train = load_split(prepared_dir, "train", spec, mmap=mapped)
    x_val, y_val = load_split(prepared_dir, "val", spec, min_images=0, mmap=mapped)  # no validation is the default
    # Checkpoints are keyed by code, data and params: the data's part is hashed while TensorFlow loads.
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    data_digest = digest_arrays_in_background(arrays) if cfg.train.checkpoint and is_chief() else None
    # TensorFlow loads only now: a bad params.yaml or input file ends in its one-line error,
    # without TensorFlow's start-up log lines on stderr or the seconds its import takes; and its CPU
    # kernels and threads are still to be fixed, which it reads once, when it loads.
    cpu_kernels.choose(cfg.train.cpu_kernels, cfg.train.cpu_threads)
    warning = cpu_kernels.bytes_warning()
    if warning:
        say(f"train: warning: {warning}")
    from mnist_pipeline.train.models import save_model_deterministic, save_weights
    from mnist_pipeline.train.onnx_export import check_images, export_checked, save_onnx
    from mnist_pipeline.train.training import train_model

    if not is_chief():
        # A worker of a multi-worker cluster trains its share and writes nothing: the chief owns the outputs.
        train_model(cfg.model, cfg.train, spec, x_train, y_train, x_val, y_val, live_dir=None, streamed=mapped)
        return
    checkpoints = None
    if data_digest is not None:
        sections = {"model": cfg.model, "train": cfg.train}  # the params train declares
        checkpoints = Checkpoints.for_run(run_key(data_digest.result(), sections))
    with atomic_dir(live_dir) as live_tmp:
        model, history = train_model(cfg.model, cfg.train, spec, x_train, y_train, x_val, y_val, live_tmp, checkpoints,
                                     streamed=mapped)
        plot_training_curves(history, live_tmp / "curves.png")
        # The ONNX file the inference commands read, checked against Keras before any model file is written.
        checked = check_images(x_train, x_val)
        onnx_bytes, difference = export_checked(model, checked, f"{model_dir}/model.onnx")
        say(f"train: model.onnx agrees with Keras on {len(checked)} {'validation' if len(x_val) else 'training'} "
            f"images (largest probability difference {difference:.2g})")
    save_model_deterministic(model, f"{model_dir}/model.keras")
    save_weights(model, f"{model_dir}/model.weights.h5")
    save_onnx(onnx_bytes, f"{model_dir}/model.onnx")
    # The tracked summary: the last epoch's numbers, and how many epochs (dvclive's folder counts steps from 0).
    summary = {key: round(float(values[-1]), 6) for key, values in history.items()}
    save_json(summary_path, {**summary, "epochs": len(history["loss"])})
    if checkpoints is not None:
        checkpoints.remove()  # every output is in place: nothing is left to resume


if __name__ == "__main__":
    run_stage(main, __doc__, "prepared_dir", "model_dir", "live_dir", "summary_path")
