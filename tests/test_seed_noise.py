"""experiments/run_experiments.py's table: mean and standard deviation over seeds, and Welch's t-test at 5%
deciding which rows differ from their baseline beyond seed noise, against values worked by hand."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from conftest import PROJECT_ROOT


def load_script() -> ModuleType:
    path = PROJECT_ROOT / "experiments" / "run_experiments.py"
    spec = importlib.util.spec_from_file_location("run_experiments", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_welch_separates_means_three_standard_errors_apart_at_four_degrees_of_freedom() -> None:
    script = load_script()
    # Variances 1 and 1 over 3 seeds each: standard error sqrt(1/3 + 1/3) = 0.816, df = 4, t(0.975, 4) = 2.776.
    assert script.beyond_seed_noise([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # t = 3 / 0.816 = 3.67
    assert not script.beyond_seed_noise([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])  # t = 2 / 0.816 = 2.45


def test_noise_note_names_the_baseline_and_the_difference_in_points() -> None:
    script = load_script()
    accuracies = {"tutorial": [0.9640, 0.9650, 0.9660], "lr-0.005": [0.9420, 0.9440, 0.9460],
                  "sigmoid": [0.9630, 0.9650, 0.9670]}
    assert script.noise_note("tutorial", accuracies) == "baseline"
    assert script.noise_note("lr-0.005", accuracies) == "-2.10 points against tutorial: beyond seed noise"
    assert script.noise_note("sigmoid", accuracies) == "+0.00 points against tutorial: within seed noise"
    assert script.noise_note("fashion-mlp", {"fashion-mlp": [0.90, 0.91]}) == (
        "no fashion-tutorial seeds to compare with")
