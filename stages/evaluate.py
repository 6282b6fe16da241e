"""Stage evaluate: test-set metrics, the confusion matrix and the most confidently wrong images."""

import csv
import hashlib
import sys

import numpy as np

from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import load_config
from mnist_pipeline.files import atomic_open, save_json
from mnist_pipeline.metrics import classification_report
from mnist_pipeline.plots import image_grid, plot_confusion
from mnist_pipeline.prepared import load_spec, load_split, split_paths
from mnist_pipeline.significance import interval_report, per_image_text, small_test_set_warning

WRONG_SHOWN = 15


def test_set_sha256(prepared_dir: str) -> str:
    """The test arrays' hash: two runs' per-image results pair up only when it is the same."""
    digest = hashlib.sha256()
    for path in split_paths(prepared_dir, "test"):
        with open(path, "rb") as f:
            hashlib.file_digest(f, lambda: digest)
    return digest.hexdigest()


def main(model_path: str, prepared_dir: str, out_dir: str) -> None:
    cfg = load_config()
    spec = load_spec(prepared_dir)
    class_names = spec.class_names
    # Memory-mapped: the test set is predicted a window at a time, so its size is bounded by the disk only.
    x_test, y_test = load_split(prepared_dir, "test", spec, mmap=True)
    # TensorFlow loads only now: a bad params.yaml or input file ends in its one-line error,
    # without TensorFlow's start-up log lines on stderr or the seconds its import takes.
    from mnist_pipeline.models import load_model, predict_in_windows

    model = load_model(model_path, spec)
    probabilities = predict_in_windows(model, x_test, cfg.evaluate.batch_size)
    report, per_class, confusion = classification_report(probabilities, y_test, class_names)
    predicted = probabilities.argmax(axis=1)

    save_json(f"{out_dir}/evaluate.json", report)
    with atomic_open(f"{out_dir}/per_class.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_class[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_class)
    with atomic_open(f"{out_dir}/confusion.csv", "w") as f:  # csv quotes a class name holding a comma
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("actual", "predicted"))
        writer.writerows((class_names[a], class_names[p]) for a, p in zip(y_test, predicted, strict=True))
    plot_confusion(confusion, class_names, f"{out_dir}/confusion.png")
    top = probabilities[np.arange(len(predicted)), predicted]
    with atomic_open(f"{out_dir}/per_image.csv", "w") as f:
        f.write(per_image_text([class_names[t] for t in y_test], [class_names[p] for p in predicted],
                               top.tolist()))
    correct = int(np.count_nonzero(predicted == y_test))
    save_json(f"{out_dir}/accuracy_interval.json", interval_report(correct, len(y_test), test_set_sha256(prepared_dir)))

    wrong = np.flatnonzero(predicted != y_test)
    confidence = probabilities[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")[:WRONG_SHOWN]]
    image_grid(
        x_test[worst],
        [f"#{i}: pred {class_names[predicted[i]]}\n{probabilities[i, predicted[i]]:.1%}, true {class_names[y_test[i]]}"
         for i in worst],
        f"{out_dir}/confident_mistakes.png",
        title=f"Most confidently wrong ({len(wrong)} mistakes in {len(y_test)})",
        image_shape=spec.array_shape,
    )
    print(f"evaluate: test accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f} "
          f"on {report['test_images']} images")
    warning = small_test_set_warning(correct, len(y_test))
    if warning:
        print(f"evaluate: {warning}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_stage(main, __doc__, "model_path", "prepared_dir", "out_dir")
