"""Everything the train stage runs: model registry, loop, checkpoints, TensorFlow and its CPU pinning."""
