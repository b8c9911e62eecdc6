"""Training precision per preset: float32 against mixed_bfloat16, side by side (issue 15).

For each preset (`--presets`, default all) it trains the preset's model twice on the same data
with the same seed, once in float32 and once with `mixed_precision="mixed_bfloat16"` (bfloat16
computation, float32 weights; the losses and importance weights stay float32), for `--epochs`
epochs each, through `tfvae.training.train` (what `tfvae train --preset NAME --mixed-precision
mixed_bfloat16` runs). It reports each run's training images/s, the validation ELBO after the
last epoch, and the test IW-NLL (K = `--samples`) on the first `--test-size` test images
(binarized once with seed 1234), then the speed ratio and the NLL difference: what a preset's
precision choice is made from. A short run shows the early gap; the presets' full runs are in
benchmarks/results/mnist_likelihood.json. The results file keeps the figures of presets not run
now (when it was written with the same epochs, K and test size), so `--presets NAME` adds or
replaces one preset's figures; each preset's figures name the CPU they were measured on.

Usage:
    python benchmarks/precision.py [--presets mnist-vae,mnist-best] [--epochs 2]
        [--train-data DIR] [--test-data DIR] [--samples 100] [--test-size 1000] [--out PATH]
    python benchmarks/precision.py --tiny --train-data T --test-data T --out PATH   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from machine import cpu_name  # noqa: E402

from tfvae.evaluation import held_out_of_run, score  # noqa: E402
from tfvae.files import write_json_atomic  # noqa: E402
from tfvae.presets import PRESET_NAMES, preset_config  # noqa: E402
from tfvae.training import MODEL_FILE, load_keras_file, train  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = {"float32": None, "mixed_bfloat16": "mixed_bfloat16"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESET_NAMES), help="comma-separated presets (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: %(default)s)")
    parser.add_argument("--train-data", default=str(DATA_DIR / "mnist-train"), help="training images (default: %(default)s)")
    parser.add_argument("--test-data", default=str(DATA_DIR / "mnist-t10k"), help="test images (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=100, help="K of the test IW-NLL (default: %(default)s)")
    parser.add_argument("--test-size", type=int, default=1000, help="test images scored (default: %(default)s)")
    parser.add_argument("--out", default=str(RESULTS / "precision.json"), help="results JSON (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, K = 10 on 20 images: a smoke test")
    args = parser.parse_args(argv)
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = sorted(set(args.presets) - set(PRESET_NAMES))
    if unknown or not args.presets:
        parser.error(f"expected --presets among {','.join(PRESET_NAMES)}, received '{','.join(unknown)}'")
    if args.tiny:
        args.epochs, args.samples, args.test_size = 1, 10, 20
    return args


def train_and_score(name: str, policy: str | None, args, folder: Path) -> dict:
    """One run of preset `name` under `policy`: its pace, validation ELBO and test IW-NLL."""
    config = preset_config(name, dataset=args.train_data, epochs=args.epochs, seed=0, mixed_precision=policy,
                           run_dir=str(folder / f"{name}-{policy or 'float32'}"))
    metrics = train(config, verbose=0)
    held_out = held_out_of_run(config, args.test_data, "test", batch_size=100)
    vae = load_keras_file(Path(config.run_dir) / MODEL_FILE)
    test = score(vae, held_out, args.samples, 100, args.test_size, seed=0)
    return {
        "images_per_second": round(metrics["num_train_examples"] * args.epochs / metrics["seconds_this_session"], 1),
        "train_seconds": metrics["seconds_this_session"],
        "validation_elbo": metrics["validation"]["elbo"],
        "test_iw_nll": test["iw_nll"],
        "test_scored": test["scored"],
    }


def protocol(args) -> dict:
    """What makes two runs' figures comparable: epochs, K, test size and whether tiny."""
    return {"epochs": args.epochs, "samples": args.samples, "test_size": args.test_size, "tiny": args.tiny}


def earlier_presets(args) -> dict:
    """The presets an earlier run of the same protocol wrote to `args.out`, minus those run now.

    A run of some presets (`--presets`) keeps the other presets' figures in the results file, so
    the file can be filled one preset per session. A file of another protocol (epochs, K, test
    size, tiny) is refused rather than mixed.

    Raises:
        SystemExit: `args.out` holds figures of another protocol.
    """
    out = Path(args.out)
    if not out.exists():
        return {}
    earlier = json.loads(out.read_text())
    ours = protocol(args)
    theirs = {key: earlier.get(key) for key in ours}
    if theirs != ours:
        raise SystemExit(f"precision.py: {out} holds figures of another protocol: expected {ours}, "
                         f"received {theirs}; give another --out")
    return {name: runs for name, runs in earlier.get("presets", {}).items() if name not in args.presets}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {**protocol(args), "cpu": cpu_name(), "presets": earlier_presets(args)}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.presets:
            runs = {label: train_and_score(name, policy, args, Path(folder)) for label, policy in PRECISIONS.items()}
            full, half = runs["float32"], runs["mixed_bfloat16"]
            runs["speedup"] = round(half["images_per_second"] / full["images_per_second"], 3)
            runs["nll_difference"] = half["test_iw_nll"] - full["test_iw_nll"]
            runs["cpu"] = results["cpu"]
            results["presets"][name] = runs
            print(f"{name}: float32 {full['images_per_second']:.0f} images/s, IW-NLL {full['test_iw_nll']:.2f}; "
                  f"mixed_bfloat16 {half['images_per_second']:.0f} images/s, IW-NLL {half['test_iw_nll']:.2f}: "
                  f"{runs['speedup']:.2f}x the speed, {runs['nll_difference']:+.2f} nats "
                  f"({args.epochs} epochs, K = {args.samples}, {full['test_scored']})", flush=True)
            write_json_atomic(Path(args.out), results)
    print(f"results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
