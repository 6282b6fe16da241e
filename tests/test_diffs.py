"""Diffs across commits work from a fresh `git clone` with no DVC cache and no remote.

Metrics and plot data are `cache: false` outputs committed to git, so a clone has everything
`dvc metrics diff`, `dvc params diff` and `dvc plots diff` need. Two commits differ in
`train.epochs` (1 -> 2); every metrics file, the one param and every plot must show it.

params.yaml is committed in the layout `dvc exp run -S` writes, so an experiment's `git diff`
shows the keys it set and nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT, Project, make_project
from dvc_spec import covers

pytestmark = pytest.mark.slow

BASE_PARAMS = {"preprocess.val_size": 100, "train.epochs": 1}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    root = tmp_path_factory.mktemp("diffs")
    origin = make_project(root / "origin", mirror_root, BASE_PARAMS)
    origin.repro()
    origin.commit("1 epoch")
    origin.set_params({"train.epochs": 2})
    assert "train" in origin.repro()
    origin.commit("2 epochs")
    subprocess.run(["git", "clone", "-q", str(origin.path), str(root / "clone")], check=True, env=origin.env)
    return Project(root / "clone", None)


def declared(clone: Project) -> tuple[list[str], list[str]]:
    """Metrics files and plot ids from dvc.yaml: top-level entries and those of every stage."""
    spec = yaml.safe_load((clone.path / "dvc.yaml").read_text())

    def names(entries: list[Any]) -> list[str]:
        return [e if isinstance(e, str) else next(iter(e)) for e in entries]

    metrics = names(spec.get("metrics", [])) + [m for s in spec["stages"].values() for m in names(s.get("metrics", []))]
    plots = names(spec.get("plots", [])) + [p for s in spec["stages"].values() for p in names(s.get("plots", []))]
    return metrics, plots


def dvc_json(clone: Project, *args: str) -> Any:
    return json.loads(clone.dvc(*args, "--json").stdout)


def test_clone_has_no_dvc_cache(clone: Project) -> None:
    cache = clone.path / ".dvc" / "cache"
    assert not cache.exists() or not any(cache.rglob("*")), "the clone should start without a DVC cache"
    assert not (clone.path / "models" / "model.keras").exists()


def test_metrics_diff_shows_every_metrics_file_changed(clone: Project) -> None:
    diff = dvc_json(clone, "metrics", "diff", "HEAD~1")
    metrics, _ = declared(clone)
    assert metrics, "dvc.yaml declares no metrics"
    for file in metrics:
        assert file in diff, f"{file} missing from `dvc metrics diff`: {sorted(diff)}"
        assert any(v["old"] != v["new"] for v in diff[file].values()), f"{file}: no value changed"
    # The train summary counts epochs, as params.yaml does (dvclive's 0-based `step` read as an off-by-one).
    assert diff["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}
    assert not any("step" in key for values in diff.values() for key in values), diff


def test_params_diff_shows_exactly_the_changed_param(clone: Project) -> None:
    diff = dvc_json(clone, "params", "diff", "HEAD~1")
    assert diff == {"params.yaml": {"train.epochs": {"old": 1, "new": 2, "diff": 1}}}


def test_plots_diff_shows_both_revisions_and_the_change(clone: Project, tmp_path: Path) -> None:
    result = dvc_json(clone, "plots", "diff", "HEAD~1", "-o", str(tmp_path))
    assert not result.get("errors"), result.get("errors")
    _, plots = declared(clone)
    assert plots, "dvc.yaml declares no plots"
    for plot in plots:
        # A plot id that is a folder (dvclive's plots dir) shows as one plot per file inside it.
        shown = [k for k in result["data"] if covers(k, plot)]
        assert shown, f"{plot} missing from `dvc plots diff`: {sorted(result['data'])}"
        for key in shown:
            by_rev: dict[str, list[Any]] = defaultdict(list)
            for entry in result["data"][key]:
                if entry["type"] == "vega":
                    for row in entry["content"]["data"]["values"]:
                        by_rev[row["rev"]].append({k: v for k, v in row.items() if k != "rev"})
                else:
                    (rev,) = entry["revisions"]
                    by_rev[rev].append(Path(entry["url"]).read_bytes())
            assert set(by_rev) == {"workspace", "HEAD~1"}, f"{key}: revisions {sorted(by_rev)}"
            assert by_rev["workspace"] != by_rev["HEAD~1"], f"{key}: the same in both revisions"


def test_per_epoch_plots_have_one_point_per_epoch(clone: Project, tmp_path: Path) -> None:
    """Every per-step curve (loss, accuracy; train and validation) has 1 point at HEAD~1 and 2 now."""
    result = dvc_json(clone, "plots", "diff", "HEAD~1", "-o", str(tmp_path))
    curves = 0
    for entries in result["data"].values():
        for entry in entries:
            rows = entry["content"]["data"]["values"] if entry["type"] == "vega" else []
            if not rows or "step" not in rows[0]:
                continue
            for filename in {r.get("filename") for r in rows}:
                curves += 1
                steps = {
                    rev: sorted(int(r["step"]) for r in rows if (r["rev"], r.get("filename")) == (rev, filename))
                    for rev in ("HEAD~1", "workspace")
                }
                assert steps == {"HEAD~1": [0], "workspace": [0, 1]}, f"{filename}: steps {steps}"
    assert curves >= 2, "expected per-epoch curves for training and validation"


def test_exp_run_set_param_diff_touches_only_that_key(tmp_path: Path, mirror_root: Path) -> None:
    """The committed params.yaml, verbatim but for the tiny-data limits; `-S` rewrites it in DVC's layout."""
    project = make_project(tmp_path / "repo", mirror_root)
    text = (PROJECT_ROOT / "params.yaml").read_text()
    for key, value in (("train_limit", 1000), ("test_limit", 200)):
        text, count = re.subn(rf"^(  {key}:) 0( |$)", rf"\g<1> {value}\g<2>", text, flags=re.MULTILINE)
        assert count == 1, key
    (project.path / "params.yaml").write_text(text)
    project.commit("the committed params layout, tiny data")
    project.dvc("exp", "run", "-S", "train.epochs=2")
    changed = [line for line in project.git("diff", "--unified=0", "params.yaml").stdout.splitlines()
               if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
    assert len(changed) == 2 and re.fullmatch(r"-  epochs: \d+ *(#.*)?", changed[0]), changed
    assert re.fullmatch(r"\+  epochs: 2 *(#.*)?", changed[1]), changed
