"""The data sets we know, with the checksums we trust them by.

Checksums are pinned here (not in params) so a params edit can never loosen verification.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpec:
    """One IDX file: its name and the proofs that its bytes are the real ones."""

    name: str
    payload_sha256: str  # sha256 of the decompressed IDX bytes: equal on every mirror
    gzip_md5: str  # md5 of upstream's own .gz: a second proof for upstream bytes
    payload_size: int  # bytes of the decompressed IDX file: a download stops as soon as it would exceed them


# MNIST's frame: 28x28 greyscale, the size every data set here shares.
MNIST_FRAME = 28


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as laid out on mirrors (`<root>/<mirror_dir>/<file>`), and the shape of its images.

    `$DATASET_MIRROR` may also name the folder after the data set (`<root>/<name>/`, e.g. `fashion_mnist/`).

    The one place that knows image size and class count: the prepared arrays, the models and the
    pictures all take them from here.
    """

    name: str
    mirror_dir: str
    files: tuple[FileSpec, ...]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int] = (MNIST_FRAME, MNIST_FRAME)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_pixels(self) -> int:
        """Length of one flattened image, as the prepared arrays hold it."""
        return self.image_shape[0] * self.image_shape[1]


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
# Decompressed sizes: the IDX header (16 bytes for images, 8 for labels), then one byte per pixel or label.
IMAGES_60K = 16 + 60_000 * MNIST_FRAME * MNIST_FRAME  # 47,040,016
LABELS_60K = 8 + 60_000  # 60,008
IMAGES_10K = 16 + 10_000 * MNIST_FRAME * MNIST_FRAME  # 7,840,016
LABELS_10K = 8 + 10_000  # 10,008

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirror_dir="mnist",
        files=(
            FileSpec(
                TRAIN_IMAGES,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                IMAGES_60K,
            ),
            FileSpec(
                TRAIN_LABELS,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "d53e105ee54ea40749a09fcbcd1e9432",
                LABELS_60K,
            ),
            FileSpec(
                TEST_IMAGES,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "9fb629c4189551a2d022fa330f9573f3",
                IMAGES_10K,
            ),
            FileSpec(
                TEST_LABELS,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                "ec29112dd5afa0611ce80d1b7f02629c",
                LABELS_10K,
            ),
        ),
        class_names=("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        mirror_dir="fashion-mnist",
        files=(
            FileSpec(
                TRAIN_IMAGES,
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                IMAGES_60K,
            ),
            FileSpec(
                TRAIN_LABELS,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "25c81989df183df01b3e8a0aad5dffbe",
                LABELS_60K,
            ),
            FileSpec(
                TEST_IMAGES,
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "bef4ecab320f06d8554ea6380940ec79",
                IMAGES_10K,
            ),
            FileSpec(
                TEST_LABELS,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                "bb300cfdad3c16e7a12a480ee83cd310",
                LABELS_10K,
            ),
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def raw_name(gz_name: str) -> str:
    """The decompressed file name we store: payload bytes are equal across mirrors, gzip bytes are not."""
    return gz_name.removesuffix(".gz")
