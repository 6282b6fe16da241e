"""Named presets: every shipped one is valid, and DVC's own `-S` parser reads back exactly its values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.params import load_params
from mnist_pipeline.presets import PRESETS_DIR, available, load_preset, main, set_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = available()


def test_the_documented_presets_ship() -> None:
    assert {"cnn", "mlp-512", "fashion-mlp", "fashion-cnn"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_dvc_reads_back_every_preset_value(name: str, tmp_path: Path) -> None:
    overrides = load_preset(name)
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    args = set_args(overrides)
    assert args[::2] == ["-S"] * len(overrides)
    assert not any(" " in arg for arg in args), "arguments must survive the shell's word splitting"
    apply_overrides(params_file, args[1::2])  # what `dvc exp run -S ...` does to params.yaml
    applied = load_params(params_file)  # and the whole file stays valid
    for key, value in overrides.items():
        assert applied[key] == value, key


def test_cli_prints_the_arguments_and_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cnn"]) == 0
    assert capsys.readouterr().out.split() == set_args(load_preset("cnn"))
    assert main([]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listed] == SHIPPED


def test_cli_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "mnist_pipeline.presets", "fashion-mlp"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True)
    assert "-S data.dataset=fashion_mnist" in result.stdout


def test_unknown_preset_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cnnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown preset 'cnnn'") and "cnn" in err and "\n" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  typo: cnn\n", "unknown key 'model.typo'"),
        ("train:\n  epochs: 0\n", "train.epochs = 0: expected an integer >= 1"),
        ("model:\n  cnn:\n    filters: 32\n", "model.cnn.filters = 32"),
        ("data: [1\n", "is not valid YAML"),
        ("[]\n", "expected a YAML mapping"),
    ],
)
def test_bad_presets_name_the_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_preset("bad", tmp_path)


def test_preset_files_hold_only_known_sections() -> None:
    sections = set(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    for name in SHIPPED:
        assert set(yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())) <= sections, name
