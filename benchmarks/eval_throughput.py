"""Evaluation throughput: decodes per second of the importance-weighted NLL, and what precision
and chunk size do to it (issue 15's target: K = 1000 on 10,000 images within 15 minutes, i.e.
at least 11,000 decodes/s).

For one trained run (default: the mnist-vae model of benchmarks/mnist_likelihood.py, else an
untrained mnist-vae) it scores the first `--examples` test images (binarized once with seed 1234)
with K = `--samples` in every configuration:

    float32            `importance_weighted_nll`'s default (max_decodes 20,000 per chunk)
    float32-chunk50k   float32 with max_decodes 50,000
    bfloat16           `decode_precision="bfloat16"`: the decoder's bfloat16 view
    bfloat16-chunk50k  the same with max_decodes 50,000

All use the same seed. The two with the default chunk size decode the same importance samples,
so their estimates differ only by the precision; a chunk of 50,000 decodes draws its samples per
chunk, so those differ from the default's and their difference from float32 includes sampling
noise (its standard error shows how much). The script prints each configuration's decodes/s (best
and median of `--repeats` interleaved rounds, so a load on the machine falls on all of them
alike) and its mean NLL difference from float32 with the standard error of the per-image
differences.

Usage:
    python benchmarks/eval_throughput.py [--run RUN_DIR] [--test-data DIR_OR_FILE]
        [--examples 200] [--samples 1000] [--repeats 3] [--out PATH]
    python benchmarks/eval_throughput.py --tiny    # seconds; a smoke test (tests/)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from machine import cpu_name  # noqa: E402

from tfvae.evaluation import first_examples, held_out_of_run  # noqa: E402
from tfvae.files import write_json_atomic  # noqa: E402
from tfvae.models import build_conv_vae  # noqa: E402
from tfvae.presets import preset_config  # noqa: E402
from tfvae.training import (  # noqa: E402
    MODEL_FILE,
    config_likelihood,
    config_prior,
    load_keras_file,
    load_run_config,
)

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_RUN = RESULTS / "mnist_likelihood.models" / "mnist-vae"
#: name -> (decode_precision, max_decodes)
CONFIGURATIONS = {
    "float32": ("float32", 20000),
    "float32-chunk50k": ("float32", 50000),
    "bfloat16": ("bfloat16", 20000),
    "bfloat16-chunk50k": ("bfloat16", 50000),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(DEFAULT_RUN),
                        help="a trained run directory (default: %(default)s; an untrained mnist-vae if absent)")
    parser.add_argument("--test-data", default=str(DATA_DIR / "mnist-t10k"),
                        help="test images: an IDX file or folder (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=200, help="test images scored (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1000, help="K (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--out", default=str(RESULTS / "eval_throughput.json"),
                        help="the results JSON (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="a few images, K = 20, 2 rounds: a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        args.examples, args.samples, args.batch_size, args.repeats = 20, 20, 10, 2
    return args


def load_model(run: Path, test_data: str, batch_size: int):
    """The run's model and its test data, or an untrained mnist-vae (for the data's image shape)
    when `run` holds no model."""
    if (run / MODEL_FILE).is_file():
        config = load_run_config(run)
        held_out = held_out_of_run(config, test_data, "test", batch_size=batch_size)
        return load_keras_file(run / MODEL_FILE), held_out, str(run)
    config = preset_config("mnist-vae", dataset=test_data, seed=0)
    held_out = held_out_of_run(config, test_data, "test", batch_size=batch_size)
    spec = held_out.data.element_spec
    image_shape = tuple((spec[0] if isinstance(spec, tuple) else spec).shape[1:])
    vae = build_conv_vae(image_shape, config.latent_dim, config.filters, hidden_units=config.hidden_units,
                         likelihood=config_likelihood(config), prior=config_prior(config), seed=0)
    return vae, held_out, "an untrained mnist-vae (no model in --run)"


def main(argv=None) -> int:
    args = parse_args(argv)
    vae, held_out, trained = load_model(Path(args.run), args.test_data, args.batch_size)
    data, count, scored = first_examples(held_out, args.examples, args.batch_size)
    decodes = count * args.samples

    def estimate(name: str) -> tuple[float, np.ndarray]:
        precision, max_decodes = CONFIGURATIONS[name]
        started = time.perf_counter()
        nll = vae.importance_weighted_nll(data, num_samples=args.samples, batch_size=args.batch_size,
                                          max_decodes=max_decodes, seed=0, decode_precision=precision)
        return time.perf_counter() - started, nll

    for name in CONFIGURATIONS:  # traces each configuration once before timing
        estimate(name)
    seconds = {name: [] for name in CONFIGURATIONS}
    estimates = {}
    for _ in range(args.repeats):
        for name in CONFIGURATIONS:
            elapsed, estimates[name] = estimate(name)
            seconds[name].append(elapsed)
    reference = estimates["float32"]
    figures = {}
    for name, times in seconds.items():
        difference = estimates[name] - reference
        figures[name] = {
            "decode_precision": CONFIGURATIONS[name][0],
            "max_decodes": CONFIGURATIONS[name][1],
            "decodes_per_second_best": round(decodes / min(times), 1),
            "decodes_per_second_median": round(decodes / statistics.median(times), 1),
            "iw_nll": float(estimates[name].mean()),
            "difference_from_float32": float(difference.mean()),
            "difference_standard_error": float(difference.std(ddof=1) / np.sqrt(len(difference))),
            "largest_image_difference": float(np.abs(difference).max()),
        }
        print(f"{name:18s} {figures[name]['decodes_per_second_best']:9.0f} decodes/s best, "
              f"{figures[name]['decodes_per_second_median']:9.0f} median; IW-NLL {figures[name]['iw_nll']:.4f} "
              f"({figures[name]['difference_from_float32']:+.4f} +- {figures[name]['difference_standard_error']:.4f} "
              "from float32)", flush=True)
    speedup = figures["bfloat16"]["decodes_per_second_median"] / figures["float32"]["decodes_per_second_median"]
    print(f"bfloat16 / float32 (medians): {speedup:.2f}x", flush=True)
    results = {
        "model": trained, "scored": scored, "samples": args.samples, "batch_size": args.batch_size,
        "repeats": args.repeats, "tiny": args.tiny, "configurations": figures,
        "bfloat16_speedup_median": round(speedup, 3),
        "cpu": cpu_name(), "threads": os.cpu_count(),
    }
    write_json_atomic(Path(args.out), results)
    print(f"results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
