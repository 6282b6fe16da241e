"""Stage predict-sample: predict the first few test images, as the tutorial does, and show them."""

from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.config import load_config
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import check_output_paths, save_json
from mnist_pipeline.evaluate.metrics import STABLE_DECIMALS
from mnist_pipeline.evaluate.plots import image_grid
from mnist_pipeline.inference.onnx_model import load_model
from mnist_pipeline.prepared import load_spec, load_split, read_rows


def main(model_path: str, prepared_dir: str, out_dir: str) -> None:
    cfg = load_config()
    check_output_paths(f"{out_dir}/predictions.json", f"{out_dir}/predictions.png")
    spec = load_spec(prepared_dir)
    class_names = spec.class_names
    start, count = cfg.predict.start, cfg.predict.count
    x_test, y_test = load_split(prepared_dir, "test", spec, mmap=True)  # only the images shown are read
    images, labels = read_rows(x_test, start, start + count), y_test[start : start + count]
    if len(labels) == 0:
        raise PipelineError(f"params.yaml: predict.start = {start}: expected less than the {len(y_test)} test images")
    probabilities = load_model(model_path, spec.n_pixels, spec.n_classes).probabilities(images)
    predicted = probabilities.argmax(axis=1)
    rows = [
        {
            "index": start + i,
            "predicted": int(p),
            "label": int(t),
            "predicted_name": class_names[p],
            "label_name": class_names[t],
            "probability": round(float(probabilities[i, p]), STABLE_DECIMALS),  # the same on every CPU
        }
        for i, (p, t) in enumerate(zip(predicted, labels, strict=True))
    ]
    save_json(f"{out_dir}/predictions.json", {"predictions": rows})
    image_grid(
        images,
        [f"pred {r['predicted_name']} ({r['probability']:.0%})\ntrue {r['label_name']}" for r in rows],
        f"{out_dir}/predictions.png",
        title=f"Test images {start}-{start + len(rows) - 1}",
        image_shape=spec.array_shape,
        colors=["green" if r["predicted"] == r["label"] else "red" for r in rows],
    )
    said, truth = ", ".join(r["predicted_name"] for r in rows), ", ".join(r["label_name"] for r in rows)
    print(f"predict-sample: predicted [{said}], true [{truth}]")  # class names: a folder's are words


if __name__ == "__main__":
    run_stage(main, __doc__, "model_path", "prepared_dir", "out_dir")
