"""Evaluating a trained run: the test ELBO and the importance-weighted negative log-likelihood."""

from __future__ import annotations

import math
import sys
import time

import tensorflow as tf

from tfvae.data import translate_pipeline_errors
from tfvae.distributions import BernoulliLikelihood
from tfvae.training import load_data, load_run_config, load_run_model


def bits_per_dim(nll_nats: float, image_shape, discrete: bool) -> float:
    """Converts a per-image NLL in nats to bits per dimension.

    For a continuous likelihood on data scaled from 8 bits to [0, 1], the density is turned into
    the probability of the 1/256-wide bin: -log P = nll + D log 256 (D = H*W*C). A Bernoulli
    likelihood already scores discrete pixels.

    Args:
        nll_nats: float. -log p(x) per image, in nats.
        image_shape: (H, W, C).
        discrete: bool. Whether the likelihood is a probability mass (no bin correction).
    """
    dims = math.prod(image_shape)
    correction = 0.0 if discrete else dims * math.log(256.0)
    return (nll_nats + correction) / (dims * math.log(2.0))


#: Images decoded at once by `VAE.importance_weighted_nll` (its `max_decodes`): K is split into
#: chunks of this many decodes per batch, so the cost estimate times one such chunk.
_DECODES_PER_CHUNK = 20_000


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate_cost(vae, held_out: tf.data.Dataset, num_examples: int | None, num_samples: int, seed: int = 0) -> str:
    """Times the importance-weighted estimate on the first batch; says what the whole will cost.

    The first batch is scored twice with one chunk of K (the first call builds the compiled
    step that the full run reuses, the second is timed), so the estimate is that of this
    machine, this model and this batch size.

    Args:
        vae: the `tfvae.VAE` to evaluate.
        held_out: the `tf.data.Dataset` of image batches to be scored.
        num_examples: how many examples it holds, or None when unknown.
        num_samples: K, importance samples per example.
        seed: seed of the importance samples.

    Returns:
        One line: examples x K = decodes, and the estimated time.
    """
    first = held_out.take(1)
    batch = next(iter(first))
    batch_size = int((batch[0] if isinstance(batch, (list, tuple)) else batch).shape[0])
    samples = min(num_samples, max(1, _DECODES_PER_CHUNK // batch_size))
    vae.importance_weighted_nll(first, num_samples=samples, seed=seed)
    started = time.perf_counter()
    vae.importance_weighted_nll(first, num_samples=samples, seed=seed)
    seconds_per_decode = (time.perf_counter() - started) / (batch_size * samples)
    if num_examples is None:
        return (f"Scoring an unknown number of examples x K={num_samples:,} importance samples: about "
                f"{_duration(seconds_per_decode * 1000 * num_samples)} per 1,000 examples on this machine.")
    decodes = num_examples * num_samples
    return (f"Scoring {num_examples:,} examples x K={num_samples:,} importance samples = {decodes:,} "
            f"decodes: about {_duration(seconds_per_decode * decodes)} on this machine.")


def evaluate_run(
    run_dir,
    checkpoint: str = "last",
    dataset: str | None = None,
    data_dir: str | None = None,
    binarize: str | None = None,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Scores a run's model on held-out data.

    Args:
        run_dir: a run directory written by `tfvae train`.
        checkpoint: "last" or "best".
        dataset, data_dir, binarize: the data (default: the run's own settings, which also
            give the image size and channels); the validation/test split is scored.
        num_samples: K importance samples per example.
        batch_size: examples per batch.
        max_examples: score only the first N examples.
        seed: seed of the importance samples.
        verbose: print the cost (examples x K decodes and an estimate of the time, see
            `estimate_cost`) to stderr, then show a progress bar.

    Returns:
        `{"elbo", "iw_nll", "num_samples", "num_examples", "dataset", "source", "run_dir",
        "checkpoint"}` (`source` says where the data came from, e.g. "local folder 'mnist'")
        (per-image nats; `elbo` is a single-sample estimate), plus `bits_per_dim` for RGB data.

    Raises:
        FileNotFoundError: not a run directory.
        ValueError: data that does not fit the model.
    """
    config = load_run_config(run_dir)
    vae = load_run_model(run_dir, checkpoint)
    data = load_data(config, dataset=dataset, data_dir=data_dir, binarize=binarize, batch_size=batch_size)
    held_out = data.validation
    count = data.num_validation
    if max_examples:
        held_out = held_out.unbatch().take(max_examples).batch(batch_size)
        if data.num_validation is not None:
            count = min(max_examples, data.num_validation)
            held_out = held_out.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
    with translate_pipeline_errors():  # an unreadable image becomes a DataError naming it
        vae.check_data(held_out, "the evaluation data")
        elbo = vae.evaluate(held_out, verbose=0, return_dict=True)["elbo"]
        if verbose:
            print(estimate_cost(vae, held_out, count, num_samples, seed), file=sys.stderr, flush=True)
        nll = vae.importance_weighted_nll(held_out, num_samples=num_samples, seed=seed, verbose=verbose)
    result = {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "dataset": dataset or config.dataset,
        "source": data.source_description,
        "elbo": float(elbo),
        "iw_nll": float(nll.mean()),
        "num_samples": int(num_samples),
        "num_examples": int(len(nll)),
    }
    if vae.image_shape[-1] == 3:
        discrete = isinstance(vae.likelihood, BernoulliLikelihood)
        result["bits_per_dim"] = bits_per_dim(result["iw_nll"], vae.image_shape, discrete)
    return result


def format_table(result: dict) -> str:
    """A readable table of an `evaluate_run` result."""
    rows = [
        ("run", result["run_dir"]),
        ("checkpoint", result["checkpoint"]),
        ("dataset", result["dataset"]),
        ("source", result["source"]),
        ("examples", str(result["num_examples"])),
        ("ELBO (nats/image)", f"{result['elbo']:.3f}"),
        (f"IW NLL, K={result['num_samples']} (nats/image)", f"{result['iw_nll']:.3f}"),
    ]
    if "bits_per_dim" in result:
        rows.append(("bits/dim", f"{result['bits_per_dim']:.4f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
