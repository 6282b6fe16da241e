"""params.yaml faults: each bad value or file ends a real stage with one line naming key, value and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT
from faultkit import StageDir, error_line, stage_dir, write_prepared, write_raw

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.train.registry import leaf_keys, load_config

OTHER_MIRRORS = ["https://example.org/fashion/"]

# (key, bad value, what the one error line must contain after "error: params.yaml: ")
BAD_VALUES = [
    ("train.epochs", 0, "train.epochs = 0: expected an integer in [1, 100000]"),
    ("train.epochs", -3, "train.epochs = -3: expected an integer in [1, 100000]"),
    ("train.epochs", "five", "train.epochs = 'five': expected an integer in [1, 100000]"),
    ("train.epochs", 2.5, "train.epochs = 2.5: expected an integer in [1, 100000]"),
    ("train.learning_rate", 0, "train.learning_rate = 0: expected a number > 0"),
    ("train.learning_rate", -0.01, "train.learning_rate = -0.01: expected a number > 0"),
    ("train.learning_rate", float("nan"), "train.learning_rate = nan: expected a number > 0"),
    ("train.learning_rate", float("inf"), "train.learning_rate = inf: expected a number > 0"),
    ("model.dropout", 1.0, "model.dropout = 1.0: expected a number in [0, 1)"),
    ("model.dropout", -0.1, "model.dropout = -0.1: expected a number in [0, 1)"),
    ("train.label_smoothing", 1.0, "train.label_smoothing = 1.0: expected a number in [0, 1)"),
    ("train.batch_size", 0, "train.batch_size = 0: expected an integer in [1, 65536]"),
    ("train.batch_size", True, "train.batch_size = True: expected an integer in [1, 65536]"),
    ("evaluate.batch_size", -1, "evaluate.batch_size = -1: expected an integer in [1, 65536]"),
    ("download.retries", 50, "download.retries = 50: expected an integer in [0, 10]"),
    ("model.hidden", [64, 0], "model.hidden = [64, 0]: expected a list of 0 to 16 integers in [1, 1000000]"),
    ("data.dataset", "cifar10", "data.dataset = 'cifar10': expected one of mnist, fashion_mnist, folder, "
     "digit_csv"),
    ("data.dataset", "../../etc", "data.dataset = '../../etc': expected one of mnist, fashion_mnist, folder, "
     "digit_csv"),
    ("data.dataset", "fashion-mnist", "expected one of mnist, fashion_mnist, folder, digit_csv (did you mean "
     "'fashion_mnist'?)"),
    ("data.folder", "data/my images", "data.folder = 'data/my images': expected a folder inside the project named "
     "with letters, digits, '.', '_', '-' and '/'"),
    ("data.folder", "../images", "data.folder = '../images': expected a folder inside the project"),
    ("data.folder", "/home/me/images", "data.folder = '/home/me/images': expected a folder inside the project"),
    ("data.folder", "data/$HOME", "data.folder = 'data/$HOME': expected a folder inside the project"),
    ("preprocess.val_fraction", 0.8, "preprocess.val_fraction = 0.8: expected less than 1 - preprocess.test_fraction"),
    ("model.activation", "rleu", "model.activation = 'rleu': expected one of relu, sigmoid"),
    ("train.optimizer", "lbfgs", "train.optimizer = 'lbfgs': expected one of adam, sgd, rmsprop"),
    ("download.mirrors", {"mnist": ["file:///etc/"], "fashion_mnist": OTHER_MIRRORS},
     "download.mirrors = {'mnist': ['file:///etc/']"),
]


@pytest.fixture
def project(tmp_path: Path) -> StageDir:
    return stage_dir(tmp_path / "p")


def set_text(project: StageDir, edit: Any) -> None:
    project.params_file.write_text(edit(project.params_file.read_text()))


def test_the_real_params_yaml_is_valid() -> None:
    cfg = load_config(PROJECT_ROOT / "params.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.hidden) == (5, 32, [64, 64])  # the tutorial's
    assert set(leaf_keys()) >= {"train.epochs", "train.learning_rate", "model.dropout", "data.dataset"}


VALUE_IDS = [f"{k}={v!r}"[:40] for k, v, _ in BAD_VALUES]
# A few of them through a real stage process too: exit 2, one line, no traceback.
IN_A_STAGE = ["train.epochs=0", "train.learning_rate=nan", "model.dropout=1.0", "data.dataset='../../etc'"]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES, ids=VALUE_IDS)
def test_bad_value_names_key_value_and_allowed(project: StageDir, key: str, value: Any, expected: str) -> None:
    project.set_params({key: value})
    with pytest.raises(PipelineError) as caught:
        load_config(project.params_file)
    message = str(caught.value)
    assert message.startswith(f"{project.params_file}: ") and expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("key", "value", "expected"),
                         [case for case, i in zip(BAD_VALUES, VALUE_IDS, strict=True) if i in IN_A_STAGE],
                         ids=IN_A_STAGE)
def test_bad_value_stops_a_real_stage_with_one_line(project: StageDir, key: str, value: Any, expected: str) -> None:
    # The model section's keys are the train stage's to check (its model types'): download does not read them.
    stage, output = ("train", "models") if key.startswith("model.") else ("download", "data")
    project.set_params({key: value})
    line = error_line(project.run(stage))
    assert line.startswith("error: params.yaml: "), line
    assert expected in line
    assert not (project.path / output).exists()  # refused before any work


# (name, edit of the params.yaml text, what the error line must contain)
BAD_FILES = [
    ("typo train.epoch", lambda t: t.replace("  epochs: 1", "  epoch: 1"),
     "error: params.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("missing seed", lambda t: t.partition("\ntrain:\n")[0] + "\ntrain:\n"
     + re.sub(r"  seed: \d+\n", "", t.partition("\ntrain:\n")[2], count=1),
     "error: params.yaml: missing key 'train.seed': expected an integer in [0, 4294967295]"),
    ("missing key", lambda t: re.sub(r"\n  epochs: \d+.*", "", t),
     "error: params.yaml: missing key 'train.epochs': expected an integer in [1, 100000]"),
    ("unknown section", lambda t: t + "trainning:\n  epochs: 3\n",
     "error: params.yaml: unknown key 'trainning.epochs' (did you mean 'train.epochs'?)"),
    ("unknown top-level key", lambda t: t + "verbose: 1\n",
     "error: params.yaml: unknown key 'verbose': expected at the top level one of data, download"),
    ("section not a mapping", lambda t: t.replace("evaluate:\n  batch_size: 1000\n", "evaluate: 1000\n"),
     "error: params.yaml: evaluate = 1000: expected a mapping with the keys evaluate.batch_size"),
    ("invalid YAML", lambda t: t.replace("  epochs: 1", "  epochs: [1"),
     "error: params.yaml: line "),
    ("bad indentation", lambda t: t.replace("  epochs: 1", "    epochs: 1"),
     "is not valid YAML: expected <block end>, but found '<block mapping start>'"),
    ("a list, not a mapping", lambda t: "- data\n- train\n",
     "error: params.yaml: expected a YAML mapping of sections (data, train, ...), got list ['data', 'train']"),
    ("empty file", lambda t: "", "error: params.yaml: the file is empty: expected a YAML mapping of sections"),
    ("duplicate key", lambda t: t.replace("  epochs: 1", "  epochs: 1\n  epochs: 10"),
     "duplicate key 'epochs' (DVC refuses the file; write each key once)"),
    ("top-level dotted key", lambda t: t + "train.epochs: 1\n",
     "error: params.yaml: top-level key 'train.epochs' is not read: set it inside the 'train' section (only the "
     "nested layout counts, as DVC reads it)"),
    ("yaml alias", lambda t: "x: &a [1, 2]\n" + t.replace("  epochs: 1", "  epochs: *a"),
     "alias '*a' is not allowed: params hold plain values, written out"),
    ("alias bomb", lambda t: "".join(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10 if i else ["1"] * 10) + "]\n"
                                     for i in range(9)) + t,
     "error: params.yaml: line 2: alias '*b0' is not allowed: params hold plain values, written out"),
    ("look-alike letter", lambda t: t.replace("train:", "tr\u0430in:"),
     "error: params.yaml: unknown key 'tr\u0430in.epochs' (did you mean 'train.epochs'?; it has '\u0430' (U+0430 "
     "CYRILLIC SMALL LETTER A) where 'a' is meant)"),
    ("python object tag",
     lambda t: t.replace("  epochs: 1", "  epochs: !!python/object/apply:os.system ['touch pwned']"),
     "tag '!!python/object/apply:os.system' is not allowed: params hold plain YAML values only"),
]


@pytest.mark.parametrize(("name", "edit", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line(project: StageDir, name: str, edit: Any, expected: str) -> None:
    set_text(project, edit)
    line = error_line(project.run("download"))
    assert line.startswith("error: params.yaml:"), line
    assert expected in line
    assert not (project.path / "pwned").exists()


def test_yaml_error_names_the_line(project: StageDir) -> None:
    text = project.params_file.read_text()
    line_no = text.splitlines().index("  epochs: 1") + 1
    set_text(project, lambda t: t.replace("  epochs: 1", "  epochs: 1: 2"))
    assert error_line(project.run("download")).startswith(f"error: params.yaml: line {line_no} is not valid YAML: ")


def test_not_utf8(project: StageDir) -> None:
    project.params_file.write_bytes(project.params_file.read_bytes() + b"# caf\xe9\n")
    assert "error: params.yaml: not UTF-8 text (byte " in error_line(project.run("download"))


def test_missing_params_file(project: StageDir) -> None:
    project.params_file.unlink()
    assert error_line(project.run("download")) == "error: params.yaml: file not found (run from the project root)"


@pytest.mark.parametrize("stage", ["download", "preprocess", "train", "evaluate", "predict_sample"])
def test_every_stage_checks_params_before_any_work(project: StageDir, stage: str) -> None:
    """The typo of the issue, in every stage: one line naming the key, before reading any input."""
    set_text(project, lambda t: t.replace("  epochs: 1", "  epoch: 5"))
    line = error_line(project.run(stage))
    assert line == "error: params.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)"


def test_validation_set_larger_than_training_set(project: StageDir) -> None:
    write_raw(project.path / "data" / "raw" / "mnist", train=30, test=10)
    project.set_params({"preprocess.val_size": 30})
    line = error_line(project.run("preprocess"))
    assert line == "error: params.yaml: preprocess.val_size = 30: expected fewer than the 30 training images"
    assert not (project.path / "data" / "prepared").exists()


def test_predict_start_past_the_test_set(project: StageDir) -> None:
    write_prepared(project.path / "data" / "prepared")
    project.set_params({"predict.start": 500})
    line = error_line(project.run("predict_sample"))
    assert line == "error: params.yaml: predict.start = 500: expected less than the 20 test images"


def test_default_mirrors_are_https() -> None:
    """Bytes are trusted only after their checksum, but the defaults still never travel in clear text."""
    mirrors = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["download"]["mirrors"]
    urls = [url for dataset_urls in mirrors.values() for url in dataset_urls]
    assert urls, mirrors
    assert all(url.startswith("https://") for url in urls), urls


def _bad_values(key: str) -> list[Any]:
    """Values just outside what the schema allows for `key`, read from its own constraints: each bound,
    each choice, each type. A check dropped from config.py makes one of them pass and its test fail."""
    from typing import Literal, get_origin

    import annotated_types as at

    field = leaf_keys()[key]
    kind, bad = field.annotation, []
    for rule in field.metadata:
        step = 1 if kind is int else 0.001
        if isinstance(rule, at.Ge):
            bad.append(rule.ge - step)
        elif isinstance(rule, at.Gt):
            bad.append(rule.gt)
        elif isinstance(rule, at.Le):
            bad.append(rule.le + step)
        elif isinstance(rule, at.Lt):
            bad.append(rule.lt)
        elif isinstance(rule, at.MaxLen) and kind == list[int]:
            bad.append([1] * (rule.max_length + 1))
        elif isinstance(rule, at.MinLen) and rule.min_length > 0 and kind is not str:
            bad.append([])
    if kind == list[int]:
        low, high = map(int, re.search(r"integers in \[(-?\d+), (\d+)\]", field.description or "").groups())
        bad += [[low - 1], [high + 1], [True], ["1"]]
    elif get_origin(kind) is Literal:
        bad += ["no-such-choice", 1]
    elif kind is bool:
        bad += ["yes", 1]
    elif kind is float:
        bad += [float("nan"), "fast", True]
    elif kind is int:
        bad += [2.5, "five", True]
    elif kind is str:
        bad += ["", "../outside", "/abs/path", 7]
    elif key == "download.mirrors":
        bad += [{"mnist": ["ftp://example.org/"], "fashion_mnist": []}, {"mnist": []}, ["https://example.org/"]]
    assert bad, f"no bad value generated for {key}: teach _bad_values its type"
    return bad


@pytest.mark.parametrize(("key", "value"), [pytest.param(key, value, id=f"{key}={value!r}")
                                            for key in sorted(leaf_keys()) for value in _bad_values(key)])
def test_every_leaf_key_refuses_values_outside_its_own_constraints(key: str, value: Any) -> None:
    """Generated from the schema, not a hand list of about 14 keys: every key, every constraint."""
    from mnist_pipeline.core.config import set_dotted
    from mnist_pipeline.train.registry import validate

    tree = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    set_dotted(tree, key, value)
    with pytest.raises(PipelineError) as refused:
        validate(tree)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {key} = "), message
    assert ": expected " in message
