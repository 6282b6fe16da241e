"""Shared logic of the MNIST DVC pipeline; the `stages/` scripts are thin wrappers around it."""
