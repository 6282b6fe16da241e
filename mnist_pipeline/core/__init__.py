"""What every stage and command shares; imports nothing of the runtime (no TensorFlow, no ONNX)."""
