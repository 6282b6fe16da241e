"""Stage preprocess: raw IDX files, or a folder of your own images, -> flattened float32 arrays scaled as
the tutorial does, split into train, validation and test, and described in data/prepared.json."""

from pathlib import Path

from mnist_pipeline.core import progress
from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.config import FOLDER, load_config
from mnist_pipeline.core.files import check_output_paths
from mnist_pipeline.prepared import save_spec, spec_path
from mnist_pipeline.sources.datasets import DATASETS
from mnist_pipeline.sources.imagefolder import MANIFEST, prepare_folder
from mnist_pipeline.sources.splits import open_raw, prepared_spec, write_splits


def main(raw_dir: str, prepared_dir: str) -> None:
    cfg = load_config()
    check_output_paths(f"{prepared_dir}/x_train.npy", spec_path(prepared_dir))
    if cfg.data.dataset == FOLDER:  # raw_dir is data.folder: the user's images, one subfolder per class
        save_spec(prepared_dir, prepare_folder(raw_dir, prepared_dir, cfg.preprocess))
        return
    dataset = DATASETS[cfg.data.dataset]
    spec = prepared_spec(dataset, cfg.preprocess)
    # Raw images are read, scaled and written a chunk at a time: any size of data set fits in memory.
    written = write_splits(open_raw(raw_dir, dataset), cfg.preprocess, prepared_dir, spec)
    for split, (count, path) in written.items():
        progress.say(f"preprocess: {split}: {count} images -> {path}")
    save_spec(prepared_dir, spec)
    # The folder is kept between runs (persist): a manifest of an earlier folder run is not this data's.
    (Path(prepared_dir) / MANIFEST).unlink(missing_ok=True)


if __name__ == "__main__":
    run_stage(main, __doc__, "raw_dir", "prepared_dir")
