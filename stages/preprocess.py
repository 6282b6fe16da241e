"""Stage preprocess: raw IDX -> float32 (N, 784) arrays scaled as the tutorial does, plus a validation split."""

from mnist_pipeline import progress
from mnist_pipeline.cli import run_stage
from mnist_pipeline.data import SPLITS, load_raw, prepare, split_paths
from mnist_pipeline.files import save_npy
from mnist_pipeline.params import load_params


def main(raw_dir: str, prepared_dir: str) -> None:
    params = load_params()
    raw = load_raw(raw_dir, params["data.dataset"])
    splits = prepare(
        raw,
        scale=params["preprocess.scale"],
        offset=params["preprocess.offset"],
        val_size=params["preprocess.val_size"],
        seed=params["preprocess.seed"],
        train_limit=params["preprocess.train_limit"],
        test_limit=params["preprocess.test_limit"],
    )
    for split in SPLITS:
        images, labels = splits[split]
        x_path, y_path = split_paths(prepared_dir, split)
        save_npy(x_path, images)
        save_npy(y_path, labels)
        progress.say(f"preprocess: {split}: {len(labels)} images -> {x_path}")


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir", "prepared_dir")
