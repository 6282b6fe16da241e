"""params.yaml means to the stages what it means to DVC: one YAML dialect, or a one-line refusal.

DVC reads params.yaml as YAML 1.2 (ruamel.yaml) for dvc.lock, `dvc params diff` and `dvc exp`. A stage
that read YAML 1.1 would train 8 epochs on `epochs: 010` while dvc.lock records 10. Each scalar of the
table below is read once by the real `dvc params diff` and by the stages' parser, which must agree; then
put into a param of each type, where the stage either takes DVC's very value or refuses in one line.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, make_project, subprocess_env

from mnist_pipeline.core.config import load_config, parse_yaml, validate
from mnist_pipeline.core.errors import PipelineError

# Scalars YAML 1.1 and 1.2 read differently, and their neighbours.
SCALARS = ["010", "0o10", "08", "0_10", "1:30", "1:30:00", "yes", "no", "on", "off", "y", "1_000", ".inf",
           "-.inf", ".nan", "0x10", "0b101", "+5", "-0", "1e3", "1e-3", "+.5", "12e03", "~", "null", "True",
           "'5'"]
# Scalars DVC refuses to load ("Unsupported value of type 'date'"): the stage must refuse them too.
DVC_REFUSES = ["2001-12-14"]
# A param of each kind: int, float, bool, choice.
TARGETS = ["train.epochs", "train.learning_rate", "train.checkpoint", "model.activation"]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def dvc_reads(tmp_path: Path, text: str) -> dict[str, Any]:
    """`dvc params diff --json` of a new params.yaml in a fresh repo: each key's value as DVC has it."""
    env = subprocess_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "commit", "-q", "-m", "empty"]):
        subprocess.run(command, cwd=tmp_path, check=True, env=env, capture_output=True)
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "dvc.yaml").write_text("stages:\n  probe:\n    cmd: python -c pass\n    params:\n    - probe\n")
    result = subprocess.run(["dvc", "params", "diff", "--all", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    return {key: change["new"] for key, change in json.loads(result.stdout)["params.yaml"].items()}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.slow
def test_the_stages_parser_reads_every_scalar_as_dvc_does(tmp_path: Path) -> None:
    text = "probe:\n" + "".join(f"  k{i}: {scalar}\n" for i, scalar in enumerate(SCALARS))
    by_dvc = dvc_reads(tmp_path, text)
    by_stage = parse_yaml(text)["probe"]
    differing = [f"{scalar}: dvc {by_dvc[f'probe.k{i}']!r}, stage {by_stage[f'k{i}']!r}"
                 for i, scalar in enumerate(SCALARS) if not same(by_dvc[f"probe.k{i}"], by_stage[f"k{i}"])]
    assert not differing


def with_value(key: str, scalar: str) -> str:
    """params.yaml with `key` set to the scalar as written."""
    section, leaf = key.split(".")
    lines = (PROJECT_ROOT / "params.yaml").read_text().splitlines()
    start = lines.index(f"{section}:")
    row = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"  {leaf}:"))
    lines[row] = f"  {leaf}: {scalar}"
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", TARGETS)
@pytest.mark.parametrize("scalar", SCALARS + DVC_REFUSES)
def test_a_param_takes_dvcs_value_or_is_refused_in_one_line(key: str, scalar: str) -> None:
    tree = parse_yaml(with_value(key, scalar))  # what dvc.lock records (the test above)
    recorded = tree[key.split(".")[0]][key.split(".")[1]]
    try:
        cfg = validate(tree)
    except PipelineError as e:
        assert "\n" not in str(e) and key in str(e)
        return
    assert scalar not in DVC_REFUSES, f"{key}: {scalar} is taken, but DVC cannot load it"
    used = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
    assert used == recorded and not (isinstance(recorded, str) and not isinstance(used, str))
    assert isinstance(used, bool) == isinstance(recorded, bool)


@pytest.mark.parametrize(("text", "expected"), [
    ("train:\n  <<: {epochs: 50, seed: 7}\n",
     "merge key '<<' is not allowed: params hold plain values, written out in each section"),
    ("a: &x 1\nb: *x\n", "alias '*x' is not allowed"),
    ("train:\n  epochs: 5\n  epochs: 6\n", "duplicate key 'epochs'"),
    ("train: !!python/object:os.system x\n", "tag '!!python/object:os.system' is not allowed"),
], ids=["merge key", "alias", "duplicate key", "python tag"])
def test_yaml_that_hides_its_values_is_refused_with_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as error:
        load_config(path)
    assert expected in str(error.value) and f"{path}: line " in str(error.value)


@pytest.mark.slow
def test_epochs_010_trains_the_ten_epochs_dvc_lock_records(tiny_project: Project) -> None:
    text = (tiny_project.path / "params.yaml").read_text().replace("  epochs: 1\n", "  epochs: 010\n")
    assert "epochs: 010" in text
    (tiny_project.path / "params.yaml").write_text(text)
    tiny_project.repro("train")
    trained = json.loads((tiny_project.path / "metrics" / "train.json").read_text())["epochs"]
    recorded = parse_yaml((tiny_project.path / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]
    assert trained == recorded["train"]["epochs"] == 10


FOLDER_NAMES = ["-h", "--help", "--version", "-", "my images"]


@pytest.fixture(scope="module")
def folder_project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("folder-options") / "repo", mirror_root)
    project.repro("preprocess")
    project.commit("prepared")
    return project


@pytest.mark.slow
@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_a_folder_param_that_looks_like_an_option_fails_in_one_line(folder_project: Project, name: str) -> None:
    """DVC puts data.folder into preprocess's command; it must never become an option of the stage."""
    (folder_project.path / name / "digit").mkdir(parents=True, exist_ok=True)  # DVC finds the dependency
    lock_before = (folder_project.path / "dvc.lock").read_bytes()
    text = (folder_project.path / "params.yaml").read_text()
    changed = text.replace("  dataset: mnist\n", "  dataset: folder\n").replace("  folder: data/raw\n",
                                                                                  f"  folder: '{name}'\n")
    (folder_project.path / "params.yaml").write_text(changed)
    try:
        result = folder_project.dvc("repro", "preprocess", check=False)
    finally:
        (folder_project.path / "params.yaml").write_text(text)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.folder" in errors[0], result.stderr
    assert "usage:" not in result.stdout + result.stderr.replace(errors[0], "")
    assert (folder_project.path / "dvc.lock").read_bytes() == lock_before


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  epochs: 5\n", "  epochs: 1:30\n",
     "error: params.yaml: train.epochs = '1:30': expected an integer in [1, 100000]"),
    ("  epochs: 5\n", "  epochs: 1e3\n",
     "error: params.yaml: train.epochs = 1000.0: expected an integer in [1, 100000]"),
    ("  checkpoint: true ", "  checkpoint: yes ",
     "error: params.yaml: train.checkpoint = 'yes': expected true or false"),
    ("  learning_rate: 0.001", "  learning_rate: '1e-3'",
     "error: params.yaml: train.learning_rate = '1e-3': expected a number > 0"),
    ("  folder: data/raw ", "  folder: -h ",
     "error: params.yaml: data.folder = '-h': expected a folder inside the project "
     "named with letters, digits, '.', '_', '-' and '/', not starting with '-' (e.g. data/images)"),
], ids=["sexagesimal", "float count", "yes for a bool", "quoted number", "folder as an option"])
def test_a_value_the_dialects_read_otherwise_gets_the_exact_line(old: str, new: str, expected: str) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text()
    assert old in text
    with pytest.raises(PipelineError) as error:
        validate(parse_yaml(text.replace(old, new, 1)))
    assert f"error: {error.value}" == expected  # the line the stage prints (mnist_pipeline.core.cli.fail)
