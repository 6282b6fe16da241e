"""The "Keras for beginners" MNIST tutorial (victorzhou.com), as written, for benchmarks/train_speed.py.

Three changes, each marked: the images come from our raw IDX files instead of the `mnist` package
(whose download URL is gone), and the weights file ends in `.weights.h5`, which Keras 3 requires,
and TensorFlow loads with the project's fixed CPU kernels and thread counts, so its bytes are the same on every CPU.
Run from the project root: `python benchmarks/tutorial.py` (after `dvc repro download`), or set
MNIST_IDX_DIR to a folder holding the four IDX files (.gz or not), e.g. $DATASET_MIRROR/mnist.
"""

import os
import sys
from pathlib import Path

import numpy as np

# --- changed: TensorFlow loads with the project's fixed CPU kernels and threads, as every process of it does ---
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mnist_pipeline.train.tensorflow_runtime  # noqa: F401

# isort: split
from keras.layers import Dense
from keras.models import Sequential
from keras.utils import to_categorical

# --- changed: load the IDX files with this project's reader instead of `import mnist` ---
from mnist_pipeline.sources.idx import read_idx

IDX_DIR = Path(os.environ.get("MNIST_IDX_DIR", "data/raw/mnist"))


def idx_file(name: str) -> Path:
    return IDX_DIR / name if (IDX_DIR / name).exists() else IDX_DIR / f"{name}.gz"


train_images = read_idx(idx_file("train-images-idx3-ubyte"), "images")
train_labels = read_idx(idx_file("train-labels-idx1-ubyte"), "labels")
test_images = read_idx(idx_file("t10k-images-idx3-ubyte"), "images")
test_labels = read_idx(idx_file("t10k-labels-idx1-ubyte"), "labels")
# --- end of change ---

# Normalize the images.
train_images = (train_images / 255) - 0.5
test_images = (test_images / 255) - 0.5

# Flatten the images.
train_images = train_images.reshape((-1, 784))
test_images = test_images.reshape((-1, 784))

# Build the model.
model = Sequential([
  Dense(64, activation='relu', input_shape=(784,)),
  Dense(64, activation='relu'),
  Dense(10, activation='softmax'),
])

# Compile the model.
model.compile(
  optimizer='adam',
  loss='categorical_crossentropy',
  metrics=['accuracy'],
)

# Train the model.
model.fit(
  train_images,
  to_categorical(train_labels),
  epochs=5,
  batch_size=32,
)

# Evaluate the model.
model.evaluate(
  test_images,
  to_categorical(test_labels)
)

# Save the model to disk.
model.save_weights('model.weights.h5')  # changed: the tutorial's 'model.h5' is refused by Keras 3

# Load the model from disk later using:
# model.load_weights('model.weights.h5')

# Predict on the first 5 test images.
predictions = model.predict(test_images[:5])

# Print our model's predictions.
print(np.argmax(predictions, axis=1)) # [7, 2, 1, 0, 4]

# Check our predictions against the ground truth.
print(test_labels[:5]) # [7, 2, 1, 0, 4]
