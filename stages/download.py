"""Stage download: fetch the data set's four IDX files, accepted only when their checksums match."""

import os

from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import load_config
from mnist_pipeline.datasets import DATASETS
from mnist_pipeline.download import MIRROR_ENV, download_dataset


def main(raw_dir: str) -> None:
    cfg = load_config()
    download_dataset(DATASETS[cfg.data.dataset], raw_dir, cfg.download, env_root=os.environ.get(MIRROR_ENV))


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir")
