"""Stage download: fetch the data set's four IDX files, accepted only when their checksums match."""

import os

from mnist_pipeline.cli import run_stage
from mnist_pipeline.datasets import DATASETS
from mnist_pipeline.download import MIRROR_ENV, download_dataset
from mnist_pipeline.params import load_params


def main(raw_dir: str) -> None:
    params = load_params()
    dataset = params["data.dataset"]
    download_dataset(
        DATASETS[dataset],
        raw_dir,
        public_mirrors=params["download.mirrors"][dataset],
        timeout=params["download.timeout_s"],
        retries=params["download.retries"],
        env_root=os.environ.get(MIRROR_ENV),
    )


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir")
