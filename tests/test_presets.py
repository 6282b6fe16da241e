"""Named presets: every shipped one is valid, and DVC's own `-S` parser reads back exactly its values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from mnist_pipeline.core.config import load_config
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.presets import available, load_preset, set_args, shipped

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(PROJECT_ROOT / "params.yaml")
SHIPPED = available()


def test_the_documented_presets_ship() -> None:
    assert {"cnn", "cnn-fast", "mlp-512", "fashion-mlp", "fashion-cnn"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_dvc_reads_back_every_preset_value(name: str, tmp_path: Path) -> None:
    overrides = load_preset(name, params=PARAMS)
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    args = set_args(overrides)
    assert args[::2] == ["-S"] * len(overrides)
    assert not any(" " in arg for arg in args), "arguments must survive the shell's word splitting"
    apply_overrides(params_file, args[1::2])  # what `dvc exp run -S ...` does to params.yaml
    applied = load_config(params_file).model_dump()  # and the whole file stays valid
    for key, value in overrides.items():
        node = applied
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def presets_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnist_pipeline.presets", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("name", ["cnn", "cnn-fast"])
def test_cli_prints_the_arguments_and_lists_presets(name: str) -> None:
    one = presets_cli(name)
    assert one.returncode == 0 and one.stdout.split() == set_args(load_preset(name, params=PARAMS))
    listed = presets_cli()
    assert listed.returncode == 0
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == SHIPPED


def test_cli_runs_as_a_module() -> None:
    assert "-S data.dataset=fashion_mnist" in presets_cli("fashion-mlp").stdout


@pytest.mark.parametrize("name", ["cnnn", "../params", "/etc/passwd", "cnn.yaml"])
def test_only_names_of_shipped_presets_are_accepted(name: str) -> None:
    result = presets_cli(name)
    assert result.returncode == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert err.startswith(f"error: unknown preset '{name}' (available: cnn, ") and "\n" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  typo: cnn\n", "unknown key 'model.typo'"),
        ("train:\n  epochs: 0\n", "train.epochs = 0: expected an integer in [1, 100000]"),
        ("model:\n  cnn:\n    filters: 32\n", "model.cnn.filters = 32"),
        ("data: [1\n", "is not valid YAML"),
        ("[]\n", "expected a YAML mapping"),
    ],
)
def test_bad_presets_name_the_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_preset("bad", tmp_path, params=PARAMS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"train:\n  epochs: 1\n  epochs: 10\n", "duplicate key 'epochs' (DVC refuses the file; write each key once)"),
        (b"# caf\xe9\ntrain:\n  epochs: 1\n", "not UTF-8 text (byte 5: invalid continuation byte)"),
        (b"a: &x [1]\ntrain:\n  epochs: *x\n", "alias '*x' is not allowed"),
    ],
)
def test_presets_are_read_as_strictly_as_params(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(PipelineError) as caught:
        load_preset("bad", tmp_path, params=PARAMS)
    assert message in str(caught.value)


def test_preset_files_hold_only_known_sections() -> None:
    sections = set(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    for name in SHIPPED:
        assert set(yaml.safe_load((shipped() / f"{name}.yaml").read_text())) <= sections, name
