"""Stage evaluate: test-set metrics, the confusion matrix and the most confidently wrong images."""

import csv
import sys

import numpy as np

from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.config import load_config
from mnist_pipeline.core.files import check_output_paths, output_group, save_json
from mnist_pipeline.evaluate.metrics import classification_report
from mnist_pipeline.evaluate.plots import image_grid, plot_confusion
from mnist_pipeline.evaluate.significance import interval_report, per_image_text, small_test_set_warning
from mnist_pipeline.inference.onnx_model import load_model
from mnist_pipeline.prepared import load_spec, load_split, split_sha256

WRONG_SHOWN = 15
SHOWN_DECIMALS = 3
OUTPUTS = ("evaluate.json", "per_class.csv", "confusion.csv", "confusion.png", "confident_mistakes.png",
           "per_image.csv", "accuracy_interval.json")


def main(model_path: str, prepared_dir: str, out_dir: str) -> None:
    cfg = load_config()
    outputs = [f"{out_dir}/{name}" for name in OUTPUTS]
    check_output_paths(*outputs)
    spec = load_spec(prepared_dir)
    class_names = spec.class_names
    # Memory-mapped: the test set is predicted a window at a time, so its size is bounded by the disk only.
    x_test, y_test = load_split(prepared_dir, "test", spec, mmap=True)
    model = load_model(model_path, spec.n_pixels, spec.n_classes)
    probabilities = model.probabilities(x_test, cfg.evaluate.batch_size)
    report, per_class, confusion = classification_report(probabilities, y_test, class_names)
    predicted = probabilities.argmax(axis=1)

    wrong = np.flatnonzero(predicted != y_test)
    # Ranked by the confidence as the picture shows it (99.9%: three decimals), ties in image order: other
    # kernels (another CPU's) differ in a probability's last bits, and must not reorder the picture. Measured
    # between Keras' and ONNX Runtime's probabilities of the same models: 1 in 1,000 differ at four decimals.
    confidence = np.round(probabilities[wrong, predicted[wrong]].astype(np.float64), SHOWN_DECIMALS)
    ranked = np.argsort(-confidence, kind="stable")[:WRONG_SHOWN]
    worst, shown = wrong[ranked], confidence[ranked]

    # Written aside, then moved in together: a failure or a kill part-way leaves all the old outputs.
    top = probabilities[np.arange(len(predicted)), predicted]
    correct = int(np.count_nonzero(predicted == y_test))
    with output_group(*outputs) as (metrics, per_class_csv, confusion_csv, confusion_png, mistakes_png,
                                    per_image_csv, interval_json):
        save_json(metrics, report)
        with open(per_class_csv, "w", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(per_class[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(per_class)
        with open(confusion_csv, "w", encoding="utf-8") as f:  # csv quotes a class name holding a comma
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("actual", "predicted"))
            writer.writerows((class_names[a], class_names[p]) for a, p in zip(y_test, predicted, strict=True))
        plot_confusion(confusion, class_names, confusion_png)
        image_grid(
            x_test[worst],
            [f"#{i}: pred {class_names[predicted[i]]}\n{c:.1%}, true {class_names[y_test[i]]}"
             for i, c in zip(worst, shown, strict=True)],
            mistakes_png,
            title=f"Most confidently wrong ({len(wrong)} mistakes in {len(y_test)})",
            image_shape=spec.array_shape,
        )
        with open(per_image_csv, "w", encoding="utf-8") as f:
            f.write(per_image_text([class_names[t] for t in y_test], [class_names[p] for p in predicted],
                                   top.tolist()))
        save_json(interval_json, interval_report(correct, len(y_test), split_sha256(prepared_dir, "test")))
    print(f"evaluate: test accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f} "
          f"on {report['test_images']} images")
    warning = small_test_set_warning(correct, len(y_test))
    if warning:
        print(f"evaluate: {warning}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_stage(main, __doc__, "model_path", "prepared_dir", "out_dir")
