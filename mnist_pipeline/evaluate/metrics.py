"""Classification metrics in numpy: the evaluate stage needs nothing heavier than the predictions."""

from __future__ import annotations

import numpy as np

# Keras clips probabilities the same way in categorical cross-entropy.
EPSILON = 1e-7
# Decimals of the numbers computed from probabilities that reach metrics/ (the loss, the probabilities in
# predictions.json). ONNX Runtime's kernels differ by CPU (AVX2, AVX-512) in a probability's last bits. As a
# stronger test, Keras' and ONNX Runtime's probabilities of the same model (the default MLP, cnn-fast) differ
# by up to 2.6e-6 and the test loss by 2e-8: at six decimals 8-11% of the 10,000 top probabilities differ,
# at four 0.1%, and the loss agrees. Scores computed from the predicted classes alone keep six decimals.
STABLE_DECIMALS = 4


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON)
    return float(-np.mean(np.log(p, dtype=np.float64)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(labels.astype(np.int64) * n_classes + predicted, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )


def classification_report(
    probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> tuple[dict, list[dict], np.ndarray]:
    """The headline metrics, the per-class scores and the confusion matrix; scores rounded to 6 digits, the
    loss to STABLE_DECIMALS.

    The headline numbers are the tracked metrics file (`dvc metrics show/diff` stay a few columns
    wide); the per-class precision, recall and F1 are one row per class, written as plot data.
    """
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, len(class_names))
    true_positive = np.diag(confusion).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positive / confusion.sum(axis=0))
        recall = np.nan_to_num(true_positive / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    per_class = [
        {"class": name, "precision": round(float(p), 6), "recall": round(float(r), 6), "f1": round(float(f), 6)}
        for name, p, r, f in zip(class_names, precision, recall, f1, strict=True)
    ]
    report = {
        "loss": round(cross_entropy(probabilities, labels), STABLE_DECIMALS),
        "accuracy": round(float(np.mean(predicted == labels)), 6),
        "macro_f1": round(float(np.mean(f1)), 6),
        "errors": int(np.count_nonzero(predicted != labels)),
        "test_images": len(labels),
    }
    return report, per_class, confusion
