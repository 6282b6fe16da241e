"""tests/dvc_spec.py reads dvc.yaml as `dvc repro` runs it: `${key}` filled from params.yaml.

Fast and static: the workflow tests run `Stage.cmd` through a shell and copy `Stage.deps`, so a
literal `${data.folder}` there would be a shell error ("bad substitution") or a missing file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT
from dvc_spec import PARAMS_FILE, load_stages


def write_project(root: Path, stage: dict, params: dict) -> Path:
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": stage}}, sort_keys=False))
    (root / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_the_projects_preprocess_stage_reads_data_folder_from_params_yaml() -> None:
    stage = load_stages(PROJECT_ROOT)["preprocess"]
    folder = yaml.safe_load((PROJECT_ROOT / PARAMS_FILE).read_text())["data"]["folder"]
    assert "${" not in stage.cmd and not any("${" in d for d in stage.deps)
    assert stage.path_args[0] == folder and folder in stage.deps
    assert stage.templated == {"data.folder"}


def test_overrides_give_another_configurations_paths(tmp_path: Path) -> None:
    for name in ("dvc.yaml", PARAMS_FILE):
        shutil.copy2(PROJECT_ROOT / name, tmp_path / name)
    stage = load_stages(tmp_path, {"data.dataset": "folder", "data.folder": "data/my-images"})["preprocess"]
    assert stage.path_args[0] == "data/my-images" and "data/my-images" in stage.deps


def test_numbers_bools_and_escapes_are_written_as_dvc_writes_them(tmp_path: Path) -> None:
    stage = {"cmd": r"python -m stages.prepare ${a.n} ${ a.flag } \${literal} out/${a.name}",
             "deps": ["in/${a.name}"], "outs": [{"out/${a.name}": {"cache": False}}]}
    root = write_project(tmp_path, stage, {"a": {"n": 3, "flag": True, "name": "x"}})
    loaded = load_stages(root)["prepare"]
    assert loaded.cmd == "python -m stages.prepare 3 true ${literal} out/x"
    assert loaded.deps == ("in/x",) and loaded.outs == ("out/x",)
    assert loaded.templated == {"a.n", "a.flag", "a.name"}


@pytest.mark.parametrize(("key", "message"), [
    ("a.missing", r"dvc.yaml: stage prepare: cmd: ${a.missing} is not a key of params.yaml"),
    ("a", "dvc.yaml: stage prepare: cmd: ${a} is {'n': 3} in params.yaml: expected a string or a number"),
])
def test_a_key_params_yaml_cannot_fill_is_named(tmp_path: Path, key: str, message: str) -> None:
    root = write_project(tmp_path, {"cmd": f"python -m stages.prepare ${{{key}}}"}, {"a": {"n": 3}})
    with pytest.raises(AssertionError) as raised:
        load_stages(root)
    assert str(raised.value) == message


def test_a_dvc_yaml_without_templates_needs_no_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "python -m stages.prepare x"}}}))
    assert load_stages(tmp_path)["prepare"].cmd == "python -m stages.prepare x"
