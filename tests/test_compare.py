"""Is the difference real? The statistics (Wilson interval, exact McNemar) against hand-computed values, and
`tools/compare.py` on real commits, branches, a `dvc exp` experiment and the workspace of a temporary git + DVC
repo whose per-image results carry planted flips of known count.

The repo (tests/plantkit.py) has no training: its one stage writes per-image results with flips planted by
its params, so the flips, and so the p-values, are known exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project
from plantkit import make_planted_repo, plant

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.evaluate.significance import (
    Comparison,
    compare_correct,
    images_for_half_width,
    mcnemar_exact,
    parse_per_image,
    per_image_text,
    small_test_set_warning,
    wilson_interval,
)

COMPARE = PROJECT_ROOT / "tools" / "compare.py"


# --- the statistics, by hand -------------------------------------------------------------------------------------

def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_flips() -> None:
    # 9 flips one way, 1 the other: n = 10, P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = 11/1024, doubled.
    assert mcnemar_exact(9, 1) == 22 / 1024
    # 4 and 2: (1 + 6 + 15) / 64, doubled = 44/64.
    assert mcnemar_exact(4, 2) == 44 / 64
    # 10 and 2: (1 + 12 + 66) / 4096, doubled.
    assert mcnemar_exact(10, 2) == 158 / 4096


def test_mcnemar_exact_is_symmetric_and_capped_at_one() -> None:
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(5, 5) == 1.0  # the doubled tail of an even split is over 1
    assert mcnemar_exact(0, 0) == 1.0  # no flips: nothing to tell the runs apart
    assert mcnemar_exact(1, 0) == 1.0


def test_mcnemar_exact_stays_exact_with_thousands_of_flips() -> None:
    # Every one of 1000 flips the same way: 2 x 2^-1000, far below what floats of C(n, i) / 2^n would underflow to.
    assert mcnemar_exact(1000, 0) == 2.0**-999
    # An even-ish split of 5000 flips: the tail summed in exact fractions matches a log-space sum.
    log_terms = [math.lgamma(5001) - math.lgamma(i + 1) - math.lgamma(5001 - i) - 5000 * math.log(2)
                 for i in range(2401)]
    peak = max(log_terms)
    log_space = 2 * math.exp(peak) * sum(math.exp(t - peak) for t in log_terms)
    assert mcnemar_exact(2600, 2400) == pytest.approx(log_space, rel=1e-9)
    assert 0.004 < mcnemar_exact(2600, 2400) < 0.006


def test_wilson_interval_matches_the_textbook_formula_by_hand() -> None:
    # 6 of 21 (the newcomer's three classes): p = 0.285714, z^2 = 3.841459; centre 0.318851, half-width 0.180714.
    low, high = wilson_interval(6, 21)
    assert low == pytest.approx(0.138137, abs=2e-6) and high == pytest.approx(0.499565, abs=2e-6)
    # All wrong or all right: one end at 0 or 1, the other n / (n + z^2) from it.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.841459 / 13.841459, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.841459, abs=1e-6), 1.0)


def test_images_for_plus_minus_one_point_is_the_smallest_test_set_that_reaches_it() -> None:
    n = images_for_half_width(0.5)
    # The normal approximation's z^2 x 0.25 / 0.01^2 = 9604; Wilson's width at p = 0.5 is a hair narrower.
    assert 9590 <= n <= 9604
    low, high = wilson_interval(n // 2, n)
    assert (high - low) / 2 <= 0.01
    low, high = wilson_interval((n - 2) // 2, n - 2)
    assert (high - low) / 2 > 0.01


def test_small_test_set_warns_in_one_line_with_the_images_needed() -> None:
    line = small_test_set_warning(6, 21)
    assert line is not None and "\n" not in line
    assert line.startswith("warning: 21 test images give accuracy 0.2857 +-18.1 points (95% interval 0.1381-0.4996); "
                           "about ")
    assert line.endswith(" test images would bring it to +-1 point")
    assert small_test_set_warning(9646, 10000) is None  # full MNIST: +-0.4 points


@pytest.mark.parametrize(("flips", "verdict"), [
    ((9, 1), "worse beyond noise (p=0.021)"),
    ((1, 9), "better beyond noise (p=0.021)"),
    ((4, 2), "no detectable change (p=0.69)"),
    ((0, 0), "no detectable change (p=1)"),
])
def test_verdict_line_names_the_direction_only_beyond_noise(flips: tuple[int, int], verdict: str) -> None:
    assert Comparison(100, 80, 80 - flips[0] + flips[1], *flips).verdict(0.05) == verdict


def test_pairing_counts_flips_each_way_image_by_image() -> None:
    a = [True, True, False, False, True]
    b = [False, True, True, False, False]
    assert compare_correct(a, b) == Comparison(total=5, correct_a=3, correct_b=2, right_to_wrong=2, wrong_to_right=1)


# --- tools/compare.py on real commits ----------------------------------------------------------------------------

def run_compare(project: Project, *revs: str) -> tuple[int, list[str], list[str]]:
    result = project.run("python", str(COMPARE), *revs, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """main: the base (80 of 100 right); branch `worse9`: 9 right -> wrong and 1 wrong -> right, committed."""
    project = make_planted_repo(tmp_path_factory.mktemp("compare") / "repo")
    project.git("checkout", "-q", "-b", "worse9")
    plant(project, right_to_wrong=9, wrong_to_right=1)
    project.git("commit", "-q", "-am", "9 right -> wrong, 1 wrong -> right")
    project.git("checkout", "-q", "main")
    return project


@pytest.fixture
def workspace(repo: Project, tmp_path: Path) -> Project:
    """A copy of the repo to change the workspace of."""
    return repo.copy(tmp_path / "repo")


@pytest.mark.slow
def test_compare_two_commits_prints_intervals_flips_p_value_and_verdict(repo: Project) -> None:
    status, out, err = run_compare(repo, "main", "worse9")
    assert (status, err) == (0, [])
    assert out == [
        "A main:   accuracy 0.8000 (95% interval 0.7112-0.8666, 80 of 100 test images)",
        "B worse9: accuracy 0.7200 (95% interval 0.6251-0.7986, 72 of 100 test images)",
        "flipped: 9 right -> wrong, 1 wrong -> right (71 right in both, 19 wrong in both)",
        "exact McNemar test: p = 0.021 (two-sided, 10 flipped images, level 0.05)",
        "B against A: worse beyond noise (p=0.021)",
    ]
    status, out, _ = run_compare(repo, "worse9", "main")
    assert out[-1] == "B against A: better beyond noise (p=0.021)"


@pytest.mark.slow
def test_compare_with_the_workspace_when_one_revision_is_given(workspace: Project) -> None:
    plant(workspace, right_to_wrong=4, wrong_to_right=2)
    status, out, err = run_compare(workspace, "main")
    assert (status, err) == (0, [])
    assert out[1].startswith("B workspace: accuracy 0.7800 ")
    assert out[2] == "flipped: 4 right -> wrong, 2 wrong -> right (76 right in both, 18 wrong in both)"
    assert out[-1] == "B against A: no detectable change (p=0.69)"  # 2 x (1 + 6 + 15) / 2^6


@pytest.mark.slow
def test_compare_reads_a_dvc_experiment_by_its_name(workspace: Project) -> None:
    workspace.dvc("exp", "run", "-q", "-n", "lots-worse", "-S", "right_to_wrong=30", "-S", "wrong_to_right=0")
    workspace.git("checkout", "--", "params.yaml")
    plant(workspace)  # the workspace back to the base: only the experiment's ref holds the flips
    status, out, err = run_compare(workspace, "main", "lots-worse")
    assert (status, err) == (0, [])
    assert out[2] == "flipped: 30 right -> wrong, 0 wrong -> right (50 right in both, 20 wrong in both)"
    assert out[-1] == f"B against A: worse beyond noise (p={2 / 2**30:.2g})"  # 2 x C(30, 0) / 2^30


@pytest.mark.slow
def test_compare_refuses_test_sets_in_another_order(workspace: Project) -> None:
    plant(workspace, reverse=True)
    status, out, err = run_compare(workspace, "main")
    assert (status, out) == (2, [])
    assert err == ["error: main and workspace were not scored on the same test set: row 1 is image 0 labelled 0 "
                   "against image 99 labelled 9 (other images or another order); a paired comparison needs the "
                   "same test images in the same order"]


@pytest.mark.slow
def test_compare_refuses_other_test_arrays_with_the_same_rows(workspace: Project) -> None:
    plant(workspace, test_set="other")
    status, out, err = run_compare(workspace, "main")
    assert (status, out) == (2, [])
    assert err == ["error: main and workspace were not scored on the same test set: the test arrays differ "
                   "(metrics/accuracy_interval.json: test_set_sha256 same against other): other images, or other "
                   "preprocessing of them; a paired comparison needs the same test images in the same order"]


@pytest.mark.slow
def test_compare_names_an_unknown_revision_in_one_line(repo: Project) -> None:
    status, out, err = run_compare(repo, "no-such-branch")
    assert (status, out) == (2, [])
    assert err == ["error: no-such-branch: not a revision of this repository: expected a commit, branch, tag or "
                   "the name of a dvc experiment"]


@pytest.mark.slow
def test_compare_names_a_revision_evaluated_before_per_image_results_were_tracked(workspace: Project) -> None:
    workspace.git("checkout", "-q", "-b", "old")
    workspace.git("rm", "-q", "metrics/per_image.csv")
    workspace.git("commit", "-q", "-m", "before per-image results were tracked")
    workspace.git("checkout", "-q", "main")
    status, out, err = run_compare(workspace, "old")
    assert (status, out) == (2, [])
    assert err == ["error: old: metrics/per_image.csv: not found at this revision (evaluated before per-image "
                   "results were tracked? check it out and run dvc repro)"]



def test_per_image_file_with_another_header_is_one_line_naming_it() -> None:
    with pytest.raises(PipelineError) as raised:
        parse_per_image("index,label\n0,7\n", "main: metrics/per_image.csv")
    assert str(raised.value) == ("main: metrics/per_image.csv: expected the header image,label,predicted,confidence, "
                                 "found index,label")


def test_per_image_text_round_trips_and_rounds_confidence_to_two_decimals() -> None:
    text = per_image_text(["7", "2"], ["7", "1"], [0.99871, 0.50449])
    assert text == "image,label,predicted,confidence\n0,7,7,1.00\n1,2,1,0.50\n"
    parsed = parse_per_image(text, "x")
    assert parsed.correct == [True, False] and parsed.images == ("0", "1")
