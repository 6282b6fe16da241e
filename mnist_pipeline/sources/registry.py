"""Every data source preprocess can read, behind one interface, keyed by the `data.dataset` that selects it.

A source turns what `data.folder` names (the download's IDX folder, a folder of images, a CSV file) into
the three prepared splits (`mnist_pipeline.prepared`) and says what they hold. The stage looks its source
up here and knows no kind of source itself: a new format is one module and one entry below. The names are
the schema's (`mnist_pipeline.core.config.DATASET_NAMES`), which imports none of the readers; a test holds
the two lists equal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from mnist_pipeline.core.config import DIGIT_CSV, FOLDER, PreprocessConfig
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.prepared import PreparedSpec
from mnist_pipeline.sources.digit_csv import DigitCsvSource
from mnist_pipeline.sources.imagefolder import MANIFEST, FolderSource
from mnist_pipeline.sources.splits import IdxSource


@runtime_checkable
class Source(Protocol):
    """One kind of data preprocess reads. `writes_manifest`: whether it lists each input in `manifest.csv`."""

    writes_manifest: ClassVar[bool]

    def prepare(self, path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
        """Write the train, val and test splits of the data at `path` into `prepared_dir`; return what they hold."""
        ...


SOURCES: dict[str, Source] = {
    **{name: IdxSource(spec) for name, spec in DATASETS.items()},
    FOLDER: FolderSource(),
    DIGIT_CSV: DigitCsvSource(),
}


def prepare(name: str, path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
    """The splits of data set `name` written by its source. The prepared folder is kept between runs
    (persist): a manifest an earlier folder run left there describes other data, so it goes."""
    source = SOURCES[name]
    spec = source.prepare(path, prepared_dir, cfg)
    if not source.writes_manifest:
        (Path(prepared_dir) / MANIFEST).unlink(missing_ok=True)
    return spec
