"""The MNIST likelihood benchmark (issue 15): tfvae's presets on the standard table of the field.

Protocol. Each entry trains on the MNIST training file (../shared/data/mnist-train/, dynamic
binarization: a fresh Bernoulli draw of every gray level each epoch), split as in the VampPrior
paper: the first 50,000 images train and the last 10,000 validate (the presets' holdout "last"),
never to choose a model: the last model is scored. It is scored on the 10,000 test images
(../shared/data/mnist-t10k/) binarized once with seed 1234:

    test.iw_nll        -log p(x) with K = `--samples` (1000) importance samples, all test images
    test.elbo          the one-sample ELBO on the same images
    subset.k5000, subset.k1000   the estimates with K = `--subset-samples` (5000) and K = 1000 on
                       a fixed subset, the first `--subset-size` (1,000) test images, and their
                       gap (so the K gap is measured, not assumed)
    active_units       dimensions with Cov_x(E_q[z_d | x]) > 0.01 on the test images
    train.seconds      the wall time of `fit` (its epochs with their validation passes and
                       checkpoints; a run resumed in a later session: extrapolated from the last)
    train.images_per_second   training images x epochs / train.seconds
    parameters         the model's parameter count
    test.seconds, test.decodes_per_second   the time of the K = 1000 evaluation (the ELBO pass
                       and the importance-weighted estimate) and examples x K / that time
    decode_precision   of every evaluation: float32, or the decoder's bfloat16 view with
                       `--decode-precision bfloat16` (the subset is then also scored in float32
                       at K = 1000: subset.precision_shift_nats)

Entries (`--presets`): every `tfvae.presets` preset, trained by `tfvae.training.train` (what
`tfvae train --preset NAME` runs) into `<out>.models/<name>/`, a run directory; and `keras-io`,
the keras.io example's networks (benchmarks/baselines.py, latent size 16) in tfvae's VAE: its
architecture is no `TrainConfig`, so it is trained by `fit` on the same `tfvae.training.load_data`
pipeline with mnist-vae's batch size, learning rate and epochs. Every entry is scored by the
functions behind `tfvae evaluate RUN --dataset FILE` (`tfvae.evaluation`).

Every chosen entry is trained before any is scored (`--train-only` stops there).

Resumable. The results JSON (`--out`, default benchmarks/results/mnist_likelihood.json, meant to
be committed) is written atomically after every step (training, each evaluation); a rerun skips
the steps it holds. A trained model is kept in its run directory, so a rerun scores it without
training again; a preset run killed mid-training continues from its last epoch (`--resume`);
the baseline starts its training over. The results record the settings; a rerun with other
settings (e.g. --tiny on a full file) stops instead of mixing them.

Usage:
    python benchmarks/mnist_likelihood.py [--presets mnist-vae,mnist-best,keras-io]
        [--train-data DIR_OR_FILE] [--test-data DIR_OR_FILE] [--out PATH]
    python benchmarks/mnist_likelihood.py --tiny --train-data T --test-data T --out PATH
        # one epoch, K = 20 / 50 on a few images: a smoke test of every step (tests/); its
        # figures mean nothing

Cost (2 CPU cores, the benchmark alone): mnist-vae about 25 minutes of training, mnist-best about
90; each K = 1000 evaluation of the 10,000 test images is 10 million decodes (about 15-25
minutes at 7,000-11,000 decodes/s), and K = 5000 on 1,000 images 5 million more. Run one entry
per session (--presets) if a session is short; the results file carries on from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from baselines import build_tfvae_keras_io  # noqa: E402
from machine import cpu_name  # noqa: E402

from tfvae.evaluation import diagnostic_fields, first_examples, held_out_of_run, score  # noqa: E402
from tfvae.files import atomic_path, write_json_atomic  # noqa: E402
from tfvae.presets import PRESET_NAMES, get_preset, preset_config  # noqa: E402
from tfvae.training import (  # noqa: E402
    MODEL_FILE,
    TrainConfig,
    load_data,
    load_keras_file,
    load_run_config,
    train,
)

#: ../shared/data beside the repository, holding mnist-train/ and mnist-t10k/.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mnist_likelihood.json"
BASELINE = "keras-io"
#: The baseline's latent size (benchmarks/baselines.py's default; the keras.io example uses 2).
BASELINE_LATENT_DIM = 16
ENTRIES = (*PRESET_NAMES, BASELINE)
#: Seed of the importance samples (the test images' binarization seed is tfvae's, 1234).
SAMPLES_SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(ENTRIES),
                        help=f"comma-separated entries among {','.join(ENTRIES)} (default: all)")
    parser.add_argument("--train-data", default=str(DATA_DIR / "mnist-train"),
                        help="the training images: an IDX file or folder (default: %(default)s)")
    parser.add_argument("--test-data", default=str(DATA_DIR / "mnist-t10k"),
                        help="the test images, all scored: an IDX file or folder (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the results JSON (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1000, help="K on all test images (default: %(default)s)")
    parser.add_argument("--subset-samples", type=int, default=5000, help="the large K on the subset (default: %(default)s)")
    parser.add_argument("--subset-size", type=int, default=1000, help="test images in the subset (default: %(default)s)")
    parser.add_argument("--eval-batch-size", type=int, default=100, help="examples per evaluation batch (default: %(default)s)")
    parser.add_argument("--decode-precision", choices=["float32", "bfloat16"], default="bfloat16",
                        help="precision of the evaluation's decodes (tfvae evaluate --decode-precision); "
                        "each figure records it; with bfloat16 the subset is also scored in float32 at "
                        "K = --samples, to measure the shift (default: %(default)s, what the committed "
                        "results used: 1.5x the float32 decodes/s for mnist-vae and 1.7x for mnist-best on this "
                        "project's AVX512-BF16 CPU, without AMX)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the entries (or finish their training) and stop before scoring them")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, K = 20 / 50, a subset of 20: a smoke test")
    parser.add_argument("--table", action="store_true",
                        help="print the results file's figures as the README's markdown table, and stop")
    args = parser.parse_args(argv)
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.presets if name not in ENTRIES]
    if unknown or not args.presets:
        parser.error(f"expected --presets among {','.join(ENTRIES)}, received '{','.join(unknown)}'")
    if args.tiny:
        args.samples, args.subset_samples, args.subset_size, args.eval_batch_size = 20, 50, 20, 10
    return args


def entry_config(name: str, args, run_dir: Path) -> TrainConfig:
    """The `TrainConfig` of an entry: its preset's (the baseline: mnist-vae's data and optimizer)."""
    overrides = {"dataset": args.train_data, "run_dir": str(run_dir), "seed": 0}
    if args.tiny:
        overrides["epochs"] = 1
    if name == BASELINE:
        # Only the data and optimizer settings are used; the networks are the keras.io example's.
        config = preset_config("mnist-vae", **overrides)
        return dataclasses.replace(config, latent_dim=BASELINE_LATENT_DIM, preset=None)
    return preset_config(name, **overrides)


def train_preset(config: TrainConfig, quiet: bool) -> dict:
    """Trains (or finishes training) a preset's run directory with `tfvae.training.train`."""
    run_dir = Path(config.run_dir)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if metrics is None or metrics["epochs_completed"] < config.epochs:  # else trained, not yet recorded
        resume = (run_dir / "config.json").is_file()
        metrics = train(config, resume=resume, verbose=0 if quiet else 2)
    if metrics["stopped_on_nan"]:
        raise RuntimeError(f"{run_dir}: training stopped on a NaN or inf loss")
    return training_figures(metrics["num_train_examples"], config.epochs, metrics["seconds_this_session"],
                            metrics["epochs_run_this_session"])


def train_baseline(config: TrainConfig, quiet: bool) -> dict:
    """Trains the keras.io networks in tfvae's VAE on the run's data pipeline; saves model.keras."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(config.seed)
    data = load_data(config)
    vae = build_tfvae_keras_io(BASELINE_LATENT_DIM, seed=config.seed, image_shape=data.image_shape,
                               learning_rate=config.learning_rate)
    started = time.perf_counter()
    vae.fit(data.train, validation_data=data.validation, epochs=config.epochs, verbose=0 if quiet else 2)
    seconds = time.perf_counter() - started
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / MODEL_FILE) as temporary:
        vae.save(temporary)
    return training_figures(data.num_train, config.epochs, seconds, config.epochs)


def training_figures(num_train: int, epochs: int, seconds: float, epochs_this_session: int) -> dict:
    """Training time and pace; a resumed run's time is extrapolated from its last session."""
    if not epochs_this_session:
        return {"epochs": epochs, "num_train_examples": num_train, "seconds": None, "images_per_second": None}
    images_per_second = num_train * epochs_this_session / seconds
    return {
        "epochs": epochs,
        "num_train_examples": num_train,
        "seconds": round(num_train * epochs / images_per_second, 1),
        "seconds_extrapolated": epochs_this_session != epochs,
        "images_per_second": round(images_per_second, 1),
        "cpu": cpu_name(),
    }


def evaluation(vae, held_out, num_samples: int, max_examples: int | None, batch_size: int,
               decode_precision: str = "float32") -> dict:
    """`tfvae.evaluation.score` (ELBO and IW-NLL) with its time and decodes per second."""
    started = time.perf_counter()
    result = score(vae, held_out, num_samples, batch_size, max_examples, seed=SAMPLES_SEED,
                   decode_precision=decode_precision)
    seconds = time.perf_counter() - started
    keys = ("scored", "binarization", "elbo", "iw_nll", "num_samples", "num_examples", "bits_per_dim",
            "decode_precision")
    figures = {key: result[key] for key in keys if key in result}
    figures.update(seconds=round(seconds, 1),
                   decodes_per_second=round(result["num_examples"] * num_samples / seconds, 1), cpu=cpu_name())
    return figures


#: The table's description of each entry.
TABLE_LABELS = {
    "mnist-vae": "`mnist-vae` (conv, 32 latents, mixture prior, 25 epochs)",
    "mnist-best": "`mnist-best` (conv, 64 latents, VampPrior + IAF, KL warm-up, 60 epochs)",
    "mnist-two-layer": "`mnist-two-layer` (conv, two stochastic layers of 40 latents, VampPrior + IAF on z2, "
    "KL warm-up, 80 epochs)",
    BASELINE: f"keras.io networks in tfvae (latent {BASELINE_LATENT_DIM}, `mnist-vae`'s training)",
}
TABLE_COLUMNS = (
    "model", "test IW-NLL, K = 1000, 10,000 images", "test ELBO",
    "K = 5000 / K = 1000 on the first 1,000 images (gap)", "bfloat16 − float32, K = 1000, 1,000 images",
    "active units", "training time, images/s", "parameters", "evaluation time, decodes/s",
    "K = 5000 run, decodes/s", "CPU (training; scoring)",
)
MISSING = "not yet measured"


def markdown_table(entries: dict) -> str:
    """The README's table of the results' entries (a figure not in the results: "not yet measured")."""
    def cell(figures: dict, *keys, form=str):
        for key in keys:
            if not isinstance(figures, dict) or figures.get(key) is None:
                return MISSING
            figures = figures[key]
        return form(figures)

    def minutes(seconds: float) -> str:
        return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"

    rows = []
    for name in ENTRIES:
        if name not in entries:
            continue
        entry = entries[name]
        subset = entry.get("subset") or {}
        small, large = (f"k{entry['settings'][key]}" for key in ("samples", "subset_samples"))
        shift = cell(subset, "precision_shift_nats", form=lambda v: f"{round(v, 3) + 0.0:+.3f} nats")  # + 0.0: no "-0.000"
        if shift == MISSING and cell(subset, small, "decode_precision") == "float32":
            shift = "none: float32 decodes"
        rows.append([
            TABLE_LABELS.get(name, f"`{name}`"),
            cell(entry, "test", "iw_nll", form=lambda v: f"**{v:.2f}**"),
            cell(entry, "test", "elbo", form=lambda v: f"{v:.2f}"),
            (f"{subset[large]['iw_nll']:.2f} / {subset[small]['iw_nll']:.2f} ({subset['gap_nats']:.3f})"
             if large in subset and small in subset else MISSING),
            shift,
            (f"{entry['active_units']['active_units']} of {entry['active_units']['latent_dim']}"
             if "active_units" in entry else MISSING),
            (f"{minutes(entry['train']['seconds'])}, {entry['train']['images_per_second']:,.0f}"
             if (entry.get("train") or {}).get("seconds") else MISSING),
            cell(entry, "parameters", form=lambda v: f"{v:,}"),
            (f"{minutes(entry['test']['seconds'])}, {entry['test']['decodes_per_second']:,.0f}"
             if "test" in entry else MISSING),
            cell(subset, large, "decodes_per_second", form=lambda v: f"{v:,.0f}"),
            "; ".join(dict.fromkeys(cell(entry, part, "cpu") for part in ("train", "test"))),
        ])
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + " --- |" * len(TABLE_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def same_settings(stored: dict, now: dict) -> bool:
    """Whether results stored with `stored` settings continue under `now`: equal, except that a
    `TrainConfig` field added to tfvae since (absent from `stored`) must hold its default."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    added = set(now["config"]) - set(stored["config"])
    if any(now["config"][key] != defaults.get(key, object()) for key in added):
        return False
    trimmed = {**now, "config": {key: value for key, value in now["config"].items() if key not in added}}
    return trimmed == stored


#: The figures of `Entry.score`, in their order.
SCORING_STEPS = ("parameters", "test", "active_units", "subset")


class Entry:
    """One entry's settings and its part of the results, with the step runner that resumes."""

    def __init__(self, name: str, args, results: dict, save):
        self.name, self.args, self.save = name, args, save
        self.run_dir = Path(args.out).with_suffix(".models") / name
        self.config = entry_config(name, args, self.run_dir)
        settings = {
            "config": {key: (list(value) if isinstance(value, tuple) else value)
                       for key, value in dataclasses.asdict(self.config).items() if key != "run_dir"},
            "test_data": args.test_data, "samples": args.samples, "subset_samples": args.subset_samples,
            "subset_size": args.subset_size, "tiny": args.tiny,
        }
        self.figures = results.setdefault(name, {})
        if not same_settings(self.figures.setdefault("settings", settings), settings):
            raise SystemExit(f"{args.out} holds results of {name} made with other settings; choose another "
                             f"--out (stored: {json.dumps(self.figures['settings'])}; now: {json.dumps(settings)})")
        if name != BASELINE:
            self.figures.setdefault("description", get_preset(name).description)
        else:
            self.figures.setdefault("description", f"the keras.io example's networks (benchmarks/baselines.py), "
                                    f"latent {BASELINE_LATENT_DIM}, standard normal prior, trained with mnist-vae's "
                                    "data, batch, learning rate and epochs (settings.config is that data and "
                                    "training; its model settings do not apply)")

    def step(self, key: str, compute) -> None:
        """Computes and saves `figures[key]` unless a previous run did."""
        if key in self.figures:
            print(f"{self.name}: {key} done already, skipped", flush=True)
            return
        self.figures[key] = compute()
        self.save()
        print(f"{self.name}: {key} = {json.dumps(self.figures[key])}", flush=True)

    def train(self) -> None:
        trainer = train_baseline if self.name == BASELINE else train_preset
        scored = all(key in self.figures for key in SCORING_STEPS)
        if "train" in self.figures and not scored and not (self.run_dir / MODEL_FILE).is_file():
            # The run directories are not committed: a fresh clone trains again what it scores.
            print(f"{self.name}: trained before, but {self.run_dir / MODEL_FILE} is missing; "
                  "training again (this machine's figures replace the stored ones)", flush=True)
            del self.figures["train"]
        self.step("train", lambda: trainer(self.config, self.args.tiny))

    def score(self) -> None:
        """The evaluation steps that the results do not hold yet."""
        args = self.args
        needed = [key for key in SCORING_STEPS if key not in self.figures]
        if not needed:
            print(f"{self.name}: every figure done already, skipped", flush=True)
            return
        vae = load_keras_file(self.run_dir / MODEL_FILE)
        # The run's data settings decide how the test set is read (the baseline's are its config's).
        data_config = self.config if self.name == BASELINE else load_run_config(self.run_dir)
        held_out = held_out_of_run(data_config, args.test_data, "test", batch_size=args.eval_batch_size)
        self.step("parameters", lambda: int(vae.count_params()))
        precision = args.decode_precision
        self.step("test", lambda: evaluation(vae, held_out, args.samples, None, args.eval_batch_size, precision))
        self.step("active_units", lambda: {
            key: value for key, value in diagnostic_fields(vae, held_out.data, SAMPLES_SEED).items()
            if key in ("active_units", "latent_dim", "active_unit_threshold", "mutual_information")
        })

        def subset() -> dict:
            large = evaluation(vae, held_out, args.subset_samples, args.subset_size, args.eval_batch_size, precision)
            small = evaluation(vae, held_out, args.samples, args.subset_size, args.eval_batch_size, precision)
            figures = {f"k{args.subset_samples}": large, f"k{args.samples}": small,
                       "gap_nats": small["iw_nll"] - large["iw_nll"],
                       "scored": first_examples(held_out, args.subset_size, args.eval_batch_size)[2]}
            if precision != "float32":  # the same samples decoded in float32: the precision's shift
                full = evaluation(vae, held_out, args.samples, args.subset_size, args.eval_batch_size)
                figures[f"k{args.samples}_float32"] = full
                figures["precision_shift_nats"] = small["iw_nll"] - full["iw_nll"]
            return figures

        self.step("subset", subset)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.table:
        print(markdown_table(results.get("entries", {})))
        return 0
    results["protocol"] = (
        "Train on the training file's first 50,000 images with dynamic binarization, validate on its "
        "last 10,000 (never to choose a model: the last model is scored); score every test image "
        "binarized once with seed 1234: IW-NLL with K importance samples (Burda et al., 2015), nats "
        "per image."
    )
    entries = results.setdefault("entries", {})

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, results)

    started = time.perf_counter()
    chosen = [Entry(name, args, entries, save) for name in args.presets]
    # Every entry is trained before any is scored: a session's time goes to training first,
    # and a later session (or `--train-only` now) scores the trained models.
    for entry in chosen:
        entry.train()
    if args.train_only:
        save()
        print(f"trained {','.join(args.presets)} ({time.perf_counter() - started:.0f} s this session); "
              "rerun without --train-only to score them", flush=True)
        return 0
    for entry in chosen:
        entry.score()
    save()
    print(f"results in {out} ({time.perf_counter() - started:.0f} s this session)", flush=True)
    for name in args.presets:
        entry = entries[name]
        trained = entry["train"]["seconds"]
        print(f"{name}: test IW-NLL (K={args.samples}) {entry['test']['iw_nll']:.2f} nats, ELBO "
              f"{entry['test']['elbo']:.2f}; {entry['active_units']['active_units']} active units; trained in "
              + (f"{trained:.0f} s" if trained is not None else "an unrecorded time"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
