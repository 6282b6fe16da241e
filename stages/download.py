"""Stage download: fetch the data set's four IDX files, accepted only when their checksums match."""

import os

from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.config import LOCAL_SOURCES, load_config
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.progress import say
from mnist_pipeline.sources.download import MIRROR_ENV, download_dataset, note_folder_source


def main(raw_dir: str) -> None:
    cfg = load_config()
    if cfg.data.dataset in LOCAL_SOURCES:  # the user's own files are already here: DVC tracks them (dvc add)
        note_folder_source(raw_dir)  # an empty output would make DVC warn on every run
        say(f"download: data.dataset is {cfg.data.dataset}: nothing to download (preprocess reads data.folder)")
        return
    download_dataset(DATASETS[cfg.data.dataset], raw_dir, cfg.download, env_root=os.environ.get(MIRROR_ENV))


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir")
