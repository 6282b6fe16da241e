"""Stage train: fit the model described by params on the prepared training set."""

from mnist_pipeline.cli import run_stage
from mnist_pipeline.data import split_paths
from mnist_pipeline.distribute import is_chief
from mnist_pipeline.files import atomic_dir, load_pair
from mnist_pipeline.params import load_params
from mnist_pipeline.plots import plot_training_curves


def main(prepared_dir: str, model_dir: str, live_dir: str) -> None:
    params = load_params()
    x_train, y_train = load_pair(*split_paths(prepared_dir, "train"))
    x_val, y_val = load_pair(*split_paths(prepared_dir, "val"))
    # TensorFlow loads only now: a bad params.yaml or input file ends in its one-line error,
    # without TensorFlow's start-up log lines on stderr or the seconds its import takes.
    from mnist_pipeline.models import save_model_deterministic, save_weights
    from mnist_pipeline.training import train_model

    if not is_chief():
        # A worker of a multi-worker cluster trains its share and writes nothing: the chief owns the outputs.
        train_model(params, x_train, y_train, x_val, y_val, live_dir=None)
        return
    with atomic_dir(live_dir) as live_tmp:
        model, history = train_model(params, x_train, y_train, x_val, y_val, live_tmp)
        plot_training_curves(history, live_tmp / "curves.png")
    save_model_deterministic(model, f"{model_dir}/model.keras")
    save_weights(model, f"{model_dir}/model.weights.h5")


if __name__ == "__main__":
    run_stage(main, __doc__, "prepared_dir", "model_dir", "live_dir")
