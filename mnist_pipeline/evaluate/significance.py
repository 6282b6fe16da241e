"""Is a difference in test accuracy real? The statistics behind every comparison of two runs.

Two runs scored on the same test images are paired: what tells them apart is only the images that one
got right and the other wrong. The exact McNemar test asks how likely so lopsided a split of those
flips would be if each flip were a coin toss; the Wilson interval says how far one run's accuracy
could move on another draw of test images as large. Standard library only: no TensorFlow, no scipy.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from fractions import Fraction

from mnist_pipeline.core.errors import PipelineError

# The standard normal's 97.5% quantile: a two-sided 95% interval.
Z_95 = 1.959963984540054
PLUS_MINUS_TARGET = 0.01  # the half-width (+-1 point) that small test sets are told how to reach


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for `correct` of `total`: unlike p +- z*se, it stays inside [0, 1] and
    keeps its width at 0 or all correct, which small test sets reach."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"wilson_interval: {correct} correct of {total}: expected 0 <= correct <= total, total > 0")
    p = correct / total
    z2 = z * z
    denominator = 1 + z2 / total
    center = (p + z2 / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    # At 0 or all correct one end is exactly 0 or 1; floating point would leave it a hair off.
    low = 0.0 if correct == 0 else max(0.0, center - half)
    high = 1.0 if correct == total else min(1.0, center + half)
    return low, high


def half_width(correct: int, total: int) -> float:
    low, high = wilson_interval(correct, total)
    return (high - low) / 2


def images_for_half_width(accuracy: float, target: float = PLUS_MINUS_TARGET) -> int:
    """The fewest test images whose Wilson interval, at this accuracy, is at most +-`target` wide."""
    def width(n: int) -> float:
        return half_width(round(accuracy * n), n)

    high = 1
    while width(high) > target:
        high *= 2
    low = high // 2
    while high - low > 1:  # width shrinks with n (up to the rounding of accuracy * n): bisect
        middle = (low + high) // 2
        if width(middle) > target:
            low = middle
        else:
            high = middle
    return high


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: the binomial(n, 1/2) probability of a split of the n flips at least
    as lopsided as this one. Exact integer arithmetic: correct for n in the tens of thousands."""
    if right_to_wrong < 0 or wrong_to_right < 0:
        raise ValueError(f"mcnemar_exact: flip counts {right_to_wrong}, {wrong_to_right}: expected counts >= 0")
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(right_to_wrong, wrong_to_right) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class Comparison:
    """Two runs' results on the same test images, A the earlier or base one, B the one judged."""

    total: int
    correct_a: int
    correct_b: int
    right_to_wrong: int  # right in A, wrong in B
    wrong_to_right: int  # wrong in A, right in B

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.right_to_wrong, self.wrong_to_right)

    def beyond_noise(self, level: float) -> bool:
        return self.right_to_wrong != self.wrong_to_right and self.p_value < level

    def worse_beyond_noise(self, level: float) -> bool:
        return self.right_to_wrong > self.wrong_to_right and self.p_value < level

    def verdict(self, level: float = 0.05) -> str:
        """One line: `worse beyond noise (p=0.003)`, `better beyond noise (...)`, `no detectable change (...)`."""
        p = self.p_value
        if not self.beyond_noise(level):
            return f"no detectable change (p={format_p(p)})"
        direction = "worse" if self.right_to_wrong > self.wrong_to_right else "better"
        return f"{direction} beyond noise (p={format_p(p)})"


def compare_correct(correct_a: list[bool], correct_b: list[bool]) -> Comparison:
    """Pair two runs' per-image right/wrong, image by image (the same images in the same order)."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"compare_correct: {len(correct_a)} and {len(correct_b)} images: expected the same test set")
    return Comparison(
        total=len(correct_a),
        correct_a=sum(correct_a),
        correct_b=sum(correct_b),
        right_to_wrong=sum(a and not b for a, b in zip(correct_a, correct_b, strict=True)),
        wrong_to_right=sum(b and not a for a, b in zip(correct_a, correct_b, strict=True)),
    )


def format_p(p: float) -> str:
    """Two significant digits, never rounded to 0: 0.41, 0.012, 0.003, 2.1e-07."""
    return f"{p:.2g}"


def interval_line(name: str, correct: int, total: int) -> str:
    """`accuracy 0.9646 (95% interval 0.9608-0.9681, 9646 of 10000 test images)`."""
    low, high = wilson_interval(correct, total)
    return (f"{name}accuracy {correct / total:.4f} (95% interval {low:.4f}-{high:.4f}, "
            f"{correct} of {total} test images)")


# The per-image results evaluate writes (metrics/per_image.csv): one row per test image, in the test set's order.
PER_IMAGE_COLUMNS = ("image", "label", "predicted", "confidence")
# Two decimals: a probability computed with other SIMD kernels (AVX2, AVX-512) differs in its last bits only,
# and rounds to the same two decimals unless it sits within those bits of a rounding boundary.
CONFIDENCE_DECIMALS = 2


@dataclass(frozen=True)
class PerImage:
    """One run's per-image results: the test images (index, true label) and what the model said."""

    images: tuple[str, ...]
    labels: tuple[str, ...]
    predicted: tuple[str, ...]

    @property
    def correct(self) -> list[bool]:
        return [p == t for p, t in zip(self.predicted, self.labels, strict=True)]


def per_image_text(labels: list[str], predicted: list[str], confidence: list[float]) -> str:
    """metrics/per_image.csv's text: a header and one row per test image, in the test set's order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # csv quotes a class name holding a comma
    writer.writerow(PER_IMAGE_COLUMNS)
    writer.writerows((i, t, p, f"{c:.{CONFIDENCE_DECIMALS}f}")
                     for i, (t, p, c) in enumerate(zip(labels, predicted, confidence, strict=True)))
    return out.getvalue()


def parse_per_image(text: str, source: str) -> PerImage:
    """Read a per-image results file; a fault is one line naming `source` and the row."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != PER_IMAGE_COLUMNS:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise PipelineError(f"{source}: expected the header {','.join(PER_IMAGE_COLUMNS)}, found {found}")
    if len(rows) == 1:
        raise PipelineError(f"{source}: holds no test images: expected one row per test image")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(PER_IMAGE_COLUMNS):
            raise PipelineError(f"{source}: line {line}: expected {len(PER_IMAGE_COLUMNS)} fields "
                                f"({','.join(PER_IMAGE_COLUMNS)}), found {len(row)}")
    images, labels, predicted, _ = zip(*rows[1:], strict=True)
    return PerImage(images, labels, predicted)


def same_test_set(a: PerImage, b: PerImage) -> str | None:
    """None when both were scored on the same images in the same order; else what differs, in words."""
    if len(a.images) != len(b.images):
        return f"{len(a.images)} test images against {len(b.images)}"
    for i, (image_a, image_b, label_a, label_b) in enumerate(zip(a.images, b.images, a.labels, b.labels,
                                                                 strict=True)):
        if image_a != image_b or label_a != label_b:
            return (f"row {i + 1} is image {image_a} labelled {label_a} against image {image_b} labelled {label_b} "
                    "(other images or another order)")
    return None


# evaluate says so in one line when the 95% interval of its accuracy is wider than +- this.
WARN_HALF_WIDTH = 0.02


def interval_report(correct: int, total: int, test_set_sha256: str) -> dict:
    """metrics/accuracy_interval.json: kept out of the headline metrics file, which `dvc metrics show` prints whole."""
    low, high = wilson_interval(correct, total)
    return {"accuracy": round(correct / total, 6), "correct": correct, "test_images": total,
            "interval_95": [round(low, 6), round(high, 6)], "test_set_sha256": test_set_sha256}


def small_test_set_warning(correct: int, total: int) -> str | None:
    """One line when the test set is too small for its accuracy to mean much; None otherwise."""
    half = half_width(correct, total)
    if half <= WARN_HALF_WIDTH:
        return None
    low, high = wilson_interval(correct, total)
    needed = images_for_half_width(correct / total)
    return (f"warning: {total} test images give accuracy {correct / total:.4f} +-{half * 100:.1f} points "
            f"(95% interval {low:.4f}-{high:.4f}); about {needed:,} test images would bring it to "
            f"+-{PLUS_MINUS_TARGET * 100:g} point")
