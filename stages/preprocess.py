"""Stage preprocess: raw IDX files, a folder of your own images, or Kaggle's digit CSV -> flattened float32
arrays scaled as the tutorial does, split into train, validation and test, and described in data/prepared.json."""

from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.config import load_config
from mnist_pipeline.core.files import check_output_paths
from mnist_pipeline.prepared import save_spec, spec_path
from mnist_pipeline.sources.registry import prepare


def main(raw_dir: str, prepared_dir: str) -> None:
    """`raw_dir` is data.folder: the download's output, or the user's own images folder or CSV file."""
    cfg = load_config()
    check_output_paths(f"{prepared_dir}/x_train.npy", spec_path(prepared_dir))
    save_spec(prepared_dir, prepare(cfg.data.dataset, raw_dir, prepared_dir, cfg.preprocess))


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir", "prepared_dir")
