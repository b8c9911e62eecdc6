"""Evaluating a trained run: the test ELBO and the importance-weighted negative log-likelihood."""

from __future__ import annotations

import math
import sys
import time

import tensorflow as tf

from tfvae.data import translate_pipeline_errors
from tfvae.diagnostics import posterior_diagnostics
from tfvae.training import load_data, load_run_config, load_run_model

#: What `data_kind` reports: the values of the scored images.
DATA_KINDS = ("binary", "8bit", "dequantized", "continuous")


def bits_per_dim(nll_nats: float, image_shape, likelihood, data: str) -> float:
    """Converts a per-image NLL in nats to bits per dimension, where that number means something.

    D = H * W * C. For a probability mass over the data's values (the categorical and
    discretized logistic likelihoods on 8-bit data, the Bernoulli on binary data) the NLL is
    already -log P(x): bits/dim = nll / (D ln 2). A density over real values (Gaussian,
    continuous Bernoulli) scores 8-bit data only once it is uniformly dequantized, (255 x + u)
    / 256: then -log P(x) <= nll + D ln 256 (in expectation over u), and bits/dim =
    (nll + D ln 256) / (D ln 2). Anything else has no bits/dim, and is refused.

    Args:
        nll_nats: float. -log p(x) per image, in nats.
        image_shape: (H, W, C).
        likelihood: the model's `tfvae.distributions.Likelihood` (its `num_values` says whether
            it is a probability mass, and over how many values).
        data: one of `DATA_KINDS`, the values of the scored data (see `data_kind`).

    Returns:
        Bits per dimension.

    Raises:
        ValueError: with a one-line reason, when bits/dim are not defined for this pair.
    """
    if data not in DATA_KINDS:
        raise ValueError(f"Expected data to be one of {list(DATA_KINDS)}. Received: data={data!r}")
    dims = math.prod(image_shape)
    name = type(likelihood).__name__
    values = likelihood.num_values
    if values == 2:
        if data != "binary":
            raise ValueError(
                f"No bits/dim: the {name} scores {data} data as pixel probabilities, which is no "
                "probability of the data; binarize it (--binarize) or use an 8-bit likelihood."
            )
        correction = 0.0
    elif values == 256:
        if data not in ("binary", "8bit"):
            raise ValueError(
                f"No bits/dim: the {name} is a probability over the 256 levels k / 255, and the "
                f"data are {data} values; score 8-bit data without --dequantize."
            )
        correction = 0.0
    elif values is None:
        if data != "dequantized":
            raise ValueError(
                f"No bits/dim: the {name} is a density, and a density on {data} data is not a "
                "probability; train and score on dequantized 8-bit data (--dequantize)."
            )
        correction = dims * math.log(256.0)
    else:
        raise ValueError(f"No bits/dim: the {name} is a probability over {values} values per sub-pixel.")
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
def data_kind(images, dequantized: bool = False) -> str:
    """Which values the data hold: one of `DATA_KINDS`.

    Args:
        images: an array, tensor or `tf.data.Dataset` of image batches (read in full).
        dequantized: the data were uniformly dequantized (`DataSplits.dequantized`).

    Returns:
        "dequantized" when `dequantized`; else "binary" (only 0 and 1), "8bit" (only levels
        k / 255, within 1e-4 of a level) or "continuous".
    """
    if dequantized:
        return "dequantized"
    batches = images if isinstance(images, tf.data.Dataset) else [images]
    binary = eight_bit = True
    for batch in batches:
        values = tf.cast(batch[0] if isinstance(batch, (list, tuple)) else batch, tf.float32)
        binary = binary and bool(tf.reduce_all((values == 0.0) | (values == 1.0)))
        scaled = values * 255.0
        eight_bit = eight_bit and bool(tf.reduce_all(tf.abs(scaled - tf.round(scaled)) < 255e-4))
        if not (binary or eight_bit):
            return "continuous"
    return "binary" if binary else "8bit"


def evaluate_run(
    run_dir,
    checkpoint: str = "last",
    dataset: str | None = None,
    data_dir: str | None = None,
    binarize: str | None = None,
    dequantize: bool | None = None,
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
        dataset, data_dir, binarize, dequantize: the data (default: the run's own settings,
            which also give the image size and channels); the validation/test split is scored.
        num_samples: K importance samples per example.
        batch_size: examples per batch.
        max_examples: score only the first N examples.
        seed: seed of the importance samples.
        verbose: print the cost (examples x K decodes and an estimate of the time, see
            `estimate_cost`) to stderr, then show a progress bar.

    Returns:
        `{"elbo", "iw_nll", "num_samples", "num_examples", "dataset", "source", "run_dir",
        "checkpoint", "data"}` (`source` says where the data came from, e.g. "local folder
        'mnist'"; per-image nats; `elbo` is a single-sample estimate; `data` is the `data_kind`),
        plus `bits_per_dim` where `bits_per_dim` defines it, else `bits_per_dim_unavailable`,
        its one-line reason; plus the posterior-collapse diagnostics of `diagnostic_fields`
        (`active_units`, `kl_per_dimension`, `mutual_information`, ...).

    Raises:
        FileNotFoundError: not a run directory.
        ValueError: data that does not fit the model.
    """
    config = load_run_config(run_dir)
    vae = load_run_model(run_dir, checkpoint)
    data = load_data(
        config, dataset=dataset, data_dir=data_dir, binarize=binarize, dequantize=dequantize,
        batch_size=batch_size,
    )
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
        "data": data_kind(held_out, data.dequantized),
    }
    try:
        result["bits_per_dim"] = bits_per_dim(result["iw_nll"], vae.image_shape, vae.likelihood, result["data"])
    except ValueError as reason:
        result["bits_per_dim_unavailable"] = str(reason)
    result.update(diagnostic_fields(vae, held_out, seed))
    return result


def diagnostic_fields(vae, data, seed: int = 0) -> dict:
    """The posterior-collapse diagnostics of `tfvae.diagnostics.posterior_diagnostics` on `data`.

    Returns:
        `{"active_units", "active_unit_threshold", "latent_dim", "kl_per_dimension",
        "mutual_information", "mutual_information_max", "mutual_information_examples"}`
        (`kl_per_dimension` is None when q(z|x) or p(z) does not factorize).
    """
    report = posterior_diagnostics(vae, data, seed=seed)
    return {
        key: report[key]
        for key in (
            "active_units", "active_unit_threshold", "latent_dim", "kl_per_dimension",
            "mutual_information", "mutual_information_max", "mutual_information_examples",
        )
    }


def diagnostic_rows(result: dict) -> list[tuple[str, str]]:
    """The table rows of `diagnostic_fields`: active units, the KL of each dimension, I(x; z)."""
    rows = [
        (f"active units (Cov > {result['active_unit_threshold']:g})", f"{result['active_units']} of {result['latent_dim']}"),
    ]
    if result["kl_per_dimension"] is not None:
        rows.append(("KL per dimension (nats)", " ".join(f"{kl:.2f}" for kl in result["kl_per_dimension"])))
    rows.append((
        f"I(x; z) under q, N={result['mutual_information_examples']} (nats, <= log N = {result['mutual_information_max']:.2f})",
        "n/a (flow posterior)" if result["mutual_information"] is None else f"{result['mutual_information']:.3f}",
    ))
    return rows


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
    elif "bits_per_dim_unavailable" in result:
        rows.append(("bits/dim", result["bits_per_dim_unavailable"]))
    rows.extend(diagnostic_rows(result))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
