"""The metrics a user reads fit a 120-column terminal: `dvc metrics show/diff` and the README's `dvc exp show`.

One project (tiny real MNIST with a validation split, so the train summary has its val_* numbers too)
reproduced at 1 epoch, then at 2, both committed; then the README's two kinds of experiment. Widths are
measured as DVC prints them with room to spare (COLUMNS=1000), so a table never narrows to fit.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project, make_project, subprocess_env

pytestmark = pytest.mark.slow

MAX_WIDTH = 120
README = (PROJECT_ROOT / "README.md").read_text()
# The Daily use experiment, and one point of the README's queued grid (the same two keys).
DAILY_EXPERIMENT = "dvc exp run -S train.learning_rate=0.005 -S 'model.hidden=[128,128]'"
GRID = "dvc exp run --queue -S 'train.learning_rate=0.01,0.003,0.001' -S 'model.hidden=[64,64],[128,128]'"
GRID_POINT = ["-S", "train.learning_rate=0.01", "-S", "model.hidden=[64,64]"]
# The Daily use block runs its experiment, restores params.yaml, then a whole preset.
RESTORE = "git checkout params.yaml"
PRESET_RUN = "dvc exp run $(python -m mnist_pipeline.presets cnn)"


def widest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


def readme_commands(prefix: str) -> list[list[str]]:
    """Every README code line that starts with `prefix`, as arguments (trailing comments removed)."""
    return [shlex.split(line, comments=True) for line in README.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("layout") / "repo", mirror_root, {"preprocess.val_size": 100})
    project.repro()
    project.commit("1 epoch")
    project.set_params({"train.epochs": 2})
    assert "train" in project.repro()
    project.commit("2 epochs")
    project.env = {**project.env, "COLUMNS": "1000"}
    return project


@pytest.fixture(scope="module")
def experiments(project: Project) -> Iterator[Project]:
    """The README's experiments, run as the README runs them (restoring params.yaml in between)."""
    assert DAILY_EXPERIMENT in README and GRID in README
    project.dvc(*shlex.split(DAILY_EXPERIMENT)[1:])
    project.git("checkout", "--", "params.yaml")
    project.dvc("exp", "run", *GRID_POINT)
    project.git("checkout", "--", "params.yaml")
    yield project


def test_metrics_show_fits_and_holds_the_headline_numbers(project: Project) -> None:
    shown = project.dvc("metrics", "show").stdout
    print(shown)
    assert widest(shown) <= MAX_WIDTH, shown
    header, *rows = shown.splitlines()
    assert header.split() == ["Path", "accuracy", "epochs", "errors", "loss", "macro_f1", "test_images",
                              "val_accuracy", "val_loss"]
    assert sorted(row.split()[0] for row in rows) == ["metrics/evaluate.json", "metrics/train.json"]


def test_metrics_diff_after_more_epochs_counts_epochs_not_steps(project: Project) -> None:
    diff = project.dvc("metrics", "diff", "HEAD~1").stdout
    print(diff)
    assert widest(diff) <= MAX_WIDTH, diff
    assert "step" not in diff
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in diff.splitlines()[1:]}
    assert rows[("metrics/train.json", "epochs")] == ["1", "2", "1"]
    # Every row is a headline number: two files, 9 numbers at most (test_images is unchanged).
    assert {name for _, name in rows} <= {"accuracy", "loss", "macro_f1", "errors", "epochs", "val_accuracy",
                                          "val_loss"}


def test_readme_exp_show_commands_fit_after_the_readme_experiments(experiments: Project) -> None:
    commands = readme_commands("dvc exp show")
    assert len(commands) >= 2, "the README shows `dvc exp show` for a few experiments and for many"
    for command in commands:
        shown = experiments.dvc(*command[1:]).stdout
        print(" ".join(command), f"-> {widest(shown)} columns", shown, sep="\n")
        assert widest(shown) <= MAX_WIDTH, shown
        assert re.search(r"\baccuracy\b", shown) and "errors" in shown
        assert len(re.findall(r"[├└]── [0-9a-f]{7}", shown)) == 2, shown  # both experiments are rows
    daily = next(c for c in commands if "--only-changed" in c)
    header = experiments.dvc(*daily[1:]).stdout
    for changed in ("model.hidden", "train.learning_rate"):
        assert changed in header, header
    for noise in ("models/model.keras", "data/prepared", "macro_f1", "Created"):
        assert noise not in header, header


def daily_block() -> list[str]:
    """The code lines of the README's Daily use block, comments removed."""
    block = README.split("## Daily use", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines()]


@pytest.fixture(scope="module")
def preset_experiments(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A copy of the project after the Daily use block's sequence: its experiment, params.yaml restored,
    then the `cnn` preset (its -S arguments from the presets command, as the shell's $(...) gives them)."""
    lines = daily_block()
    start = lines.index(DAILY_EXPERIMENT)
    assert lines[start:].index(RESTORE) < lines[start:].index(PRESET_RUN), lines
    copy = project.copy(tmp_path_factory.mktemp("preset-experiments") / "repo")
    copy.dvc(*shlex.split(DAILY_EXPERIMENT)[1:])
    copy.run(*shlex.split(RESTORE))
    preset = subprocess.run([sys.executable, "-m", "mnist_pipeline.presets", "cnn"], cwd=copy.path,
                            env=subprocess_env(), capture_output=True, text=True, check=True).stdout.split()
    copy.dvc("exp", "run", *preset)
    return copy


def test_readme_exp_show_line_fits_after_the_daily_experiment_and_the_cnn_preset(
    preset_experiments: Project,
) -> None:
    """A preset changes model.type, epochs, batch size, schedule and threads at once: the README's line
    must still fit 120 columns, and still show the learning rate both experiments changed."""
    [daily] = [shlex.split(line) for line in daily_block() if line.startswith("dvc exp show")]
    shown = preset_experiments.dvc(*daily[1:]).stdout
    print(" ".join(daily), f"-> {widest(shown)} columns", shown, sep="\n")
    too_wide = [line for line in shown.splitlines() if len(line.rstrip()) > MAX_WIDTH]
    assert not too_wide, shown
    header = next(line for line in shown.splitlines() if "Experiment" in line)
    for column in ("train.learning_rate", "model.type", "model.hidden", "accuracy", "errors"):
        assert column in header, header
    assert "train.cpu_threads" not in header and "…" not in shown, shown
    # Both experiments are rows (more when the module's other experiments ran first: the copy holds them).
    assert len(re.findall(r"[├└]── [0-9a-f]{7}", shown)) >= 2 and " cnn " in shown, shown
