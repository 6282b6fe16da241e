"""Stage preprocess: raw IDX -> flattened float32 arrays scaled as the tutorial does, plus a validation split."""

from mnist_pipeline import progress
from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import load_config
from mnist_pipeline.data import load_raw, prepare
from mnist_pipeline.datasets import DATASETS
from mnist_pipeline.prepared import SPLITS, save_split


def main(raw_dir: str, prepared_dir: str) -> None:
    cfg = load_config()
    raw = load_raw(raw_dir, DATASETS[cfg.data.dataset])
    splits = prepare(raw, cfg.preprocess)
    for split in SPLITS:
        images, labels = splits[split]
        path = save_split(prepared_dir, split, images, labels)
        progress.say(f"preprocess: {split}: {len(labels)} images -> {path}")


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir", "prepared_dir")
