"""Prepared arrays reach TensorFlow without a copy: `load_npy` reads them aligned, `as_tensor` shares them.

A copy of MNIST's training set costs the train stage about half a second and as much memory again, so
the arrays a stage loads start at TensorFlow's alignment and become tensors over the same memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnist_pipeline.core.files import TENSOR_ALIGNMENT, load_npy
from mnist_pipeline.train.loop import as_tensor
from mnist_pipeline.train.tensorflow_runtime import tf

DTYPES = [np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.int64)]


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(DTYPES),
    rows=st.integers(0, 40),
    columns=st.integers(1, 9),
    flat=st.booleans(),
    fortran=st.booleans(),
    data=st.data(),
)
def test_load_npy_gives_numpys_values_starting_at_tensorflows_alignment(
    tmp_path: Path, dtype: np.dtype, rows: int, columns: int, flat: bool, fortran: bool, data: st.DataObject
) -> None:
    shape = (rows,) if flat else (rows, columns)
    array = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_nan=False)))
    path = tmp_path / "a.npy"
    np.save(path, np.asfortranarray(array) if fortran else array)
    loaded = load_npy(path, dtype, len(shape), shape[1:])
    assert loaded.dtype == dtype and loaded.shape == shape
    np.testing.assert_array_equal(loaded, np.load(path, allow_pickle=False))
    if loaded.size and loaded.flags.c_contiguous:
        assert loaded.ctypes.data % TENSOR_ALIGNMENT == 0


def test_a_loaded_array_becomes_a_tensor_over_the_same_memory(tmp_path: Path) -> None:
    images = np.arange(6 * 784, dtype=np.float32).reshape(6, 784) / 7
    np.save(tmp_path / "x.npy", images)
    loaded = load_npy(tmp_path / "x.npy", np.float32, 2, (784,))
    tensor = as_tensor(loaded)
    np.testing.assert_array_equal(tensor.numpy(), images)
    loaded[2, 5] = -1.0  # seen through the tensor: it holds no copy
    assert float(tf.gather(tensor, [2])[0, 5]) == -1.0


@pytest.mark.parametrize("offset", [4, 16, 32])
def test_an_unaligned_array_becomes_an_equal_tensor_by_copy(offset: int) -> None:
    raw = np.zeros(10 * 784 * 4 + 128, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT + offset
    images = raw[start : start + 10 * 784 * 4].view(np.float32).reshape(10, 784)
    images[...] = np.linspace(-0.5, 0.5, images.size, dtype=np.float32).reshape(10, 784)
    tensor = as_tensor(images)
    np.testing.assert_array_equal(tf.gather(tensor, [3, 9]).numpy(), images[[3, 9]])
    images[3, 0] = 9.0  # a copy: the tensor keeps the values it was made from
    assert float(tf.gather(tensor, [3])[0, 0]) != 9.0
