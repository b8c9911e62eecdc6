"""Evaluating a trained run: the test ELBO and the importance-weighted negative log-likelihood."""

from __future__ import annotations

import math
import sys
import time

import tensorflow as tf

from tfvae.data import load_held_out, translate_pipeline_errors
from tfvae.diagnostics import posterior_diagnostics
from tfvae.training import load_run_config, load_run_model

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


def estimate_cost(
    vae, held_out: tf.data.Dataset, num_examples: int | None, num_samples: int, seed: int = 0,
    decode_precision: str = "float32",
) -> str:
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
        decode_precision: "float32" or "bfloat16", see `VAE.importance_weighted_nll`.

    Returns:
        One line: examples x K = decodes, and the estimated time.
    """
    first = held_out.take(1)
    batch = next(iter(first))
    batch_size = int((batch[0] if isinstance(batch, (list, tuple)) else batch).shape[0])
    samples = min(num_samples, max(1, _DECODES_PER_CHUNK // batch_size))
    vae.importance_weighted_nll(first, num_samples=samples, seed=seed, decode_precision=decode_precision)
    started = time.perf_counter()
    vae.importance_weighted_nll(first, num_samples=samples, seed=seed, decode_precision=decode_precision)
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


def score(
    vae,
    held_out,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    verbose: bool = False,
    decode_precision: str = "float32",
) -> dict:
    """The ELBO and importance-weighted NLL of `vae` on held-out data, saying what was scored.

    Args:
        vae: a trained `tfvae.VAE`.
        held_out: a `tfvae.data.HeldOutData` (`tfvae.data.load_held_out`, `DataSplits.test`).
        num_samples: K importance samples per example.
        batch_size: the batch size of `held_out.data` (used to re-batch `max_examples`).
        max_examples: score only the first N examples.
        seed: seed of the importance samples.
        verbose: print the cost (see `estimate_cost`) to stderr, then show a progress bar.
        decode_precision: "float32" (default) or "bfloat16": the precision of the IW-NLL's
            decodes (`VAE.importance_weighted_nll`); the weights are float32 either way.

    Returns:
        `{"source", "split", "scored", "binarization", "elbo", "iw_nll", "num_samples",
        "num_examples", "data", "decode_precision"}`: `scored` says which examples in words (e.g. "all 500 examples
        of local file 'test.npz'"); per-image nats; `elbo` is a single-sample estimate; `data`
        is the `data_kind`; for a conditional model `num_classes` (its ELBO and NLL are those
        of p(x|y), given the data's labels); plus `bits_per_dim` where `bits_per_dim` defines it, else
        `bits_per_dim_unavailable`, its one-line reason.

    Raises:
        ValueError: data that does not fit the model; a `tfvae.data.DataError` naming an
            unreadable image.
    """
    data, count, scored = first_examples(held_out, max_examples, batch_size)
    with translate_pipeline_errors():  # an unreadable image becomes a DataError naming it
        vae.check_data(data, "the evaluation data")
        elbo = vae.evaluate(data, verbose=0, return_dict=True)["elbo"]
        if verbose:
            print(estimate_cost(vae, data, count, num_samples, seed, decode_precision), file=sys.stderr, flush=True)
        nll = vae.importance_weighted_nll(
            data, num_samples=num_samples, seed=seed, verbose=verbose, decode_precision=decode_precision
        )
    result = {
        "source": held_out.source_description,
        "split": held_out.split,
        "scored": scored,
        "binarization": held_out.binarization,
        "elbo": float(elbo),
        "iw_nll": float(nll.mean()),
        "num_samples": int(num_samples),
        "num_examples": int(len(nll)),
        "data": data_kind(data, held_out.dequantized),
        "decode_precision": decode_precision,
    }
    num_classes = getattr(vae, "num_classes", None)
    if num_classes is not None:  # a conditional model: the NLL is -log p(x|y), given the data's labels
        result["num_classes"] = num_classes
    try:
        result["bits_per_dim"] = bits_per_dim(result["iw_nll"], vae.image_shape, vae.likelihood, result["data"])
    except ValueError as reason:
        result["bits_per_dim_unavailable"] = str(reason)
    return result


def first_examples(held_out, max_examples: int | None, batch_size: int):
    """The first `max_examples` of a `tfvae.data.HeldOutData` (all of them for None).

    Returns:
        `(batches, count or None, description)`: the dataset of batches of `batch_size`, how
        many examples it holds, and which they are in words.
    """
    data, count, scored = held_out.data, held_out.num_examples, held_out.description
    if max_examples and (count is None or max_examples < count):
        data = data.unbatch().take(max_examples).batch(batch_size)
        if count is not None:
            count = max_examples
            data = data.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
        scored = f"the first {max_examples:,} of {scored}"
    return data, count, scored


def held_out_of_run(config, dataset: str | None = None, split: str | None = None, **overrides):
    """The `tfvae.data.HeldOutData` that `tfvae evaluate` scores for a run.

    No `dataset`: the run's validation split (split "validation", the default: exactly the
    examples training validated on) or its test set (split "test": the run's `test_dataset`).
    A `dataset`: its test set (split "test", the default: all of a local file or folder, a
    tfds name's test split) or the validation split training on it would hold out ("validation").
    Image size, channels, validation fraction and seed are the run's; labels are loaded for a
    conditional run.

    Args:
        config: the run's `TrainConfig`.
        dataset: a source, or None for the run's own.
        split: "test", "validation" or None (see above).
        **overrides: `data_dir`, `binarize`, `dequantize`, `batch_size`: None keeps the run's.

    Raises:
        ValueError: an unknown split, or split "test" of a run without a test set.
        FileNotFoundError: as `tfvae.data.load_held_out`.
    """
    if split not in (None, "test", "validation"):
        raise ValueError(f"Expected split 'test', 'validation' or None. Received: split={split!r}")
    if dataset is None and split == "test":
        if config.test_dataset is None:
            raise ValueError(
                f"Expected a run trained with a test set (--test-dataset) for split 'test'. Received: the run "
                f"'{config.run_dir}', which has none; pass --dataset SOURCE to score a test set."
            )
        dataset = config.test_dataset
    elif dataset is None:
        dataset, split = config.dataset, "validation"
    settings = {name: getattr(config, name) for name in (
        "data_dir", "binarize", "threshold", "image_size", "channels", "validation_fraction", "cache", "dequantize",
        "holdout",
    )}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if settings["binarize"] != "static":
        settings["threshold"] = None
    return load_held_out(dataset, split=split or "test", seed=config.seed, labels=config.conditional, **settings)


def evaluate_run(
    run_dir,
    checkpoint: str = "last",
    dataset: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    binarize: str | None = None,
    dequantize: bool | None = None,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    decode_precision: str = "float32",
) -> dict:
    """Scores a run's model on held-out data.

    Args:
        run_dir: a run directory written by `tfvae train`.
        checkpoint: "last" or "best".
        dataset: a source to score (a test set: all of a local file or folder, the test split
            of a tfds name), or None for the run's own data (see `held_out_of_run`).
        split: "test" or "validation", see `held_out_of_run` (default: "validation" of the run's
            dataset; "test" of a given `dataset`).
        data_dir, binarize, dequantize: override the run's data settings (which also give the
            image size and channels). Binarized or dequantized data is scored on one fixed
            sample drawn with seed 1234 (`tfvae.data.EVALUATION_SEED`).
        num_samples: K importance samples per example.
        batch_size: examples per batch.
        max_examples: score only the first N examples.
        seed: seed of the importance samples.
        verbose: print the cost (examples x K decodes and an estimate of the time, see
            `estimate_cost`) to stderr, then show a progress bar.
        decode_precision: "float32" (default) or "bfloat16", see `score`.

    Returns:
        The fields of `score` (`source`, e.g. "local folder 'mnist'"; `split`; `scored`, the
        examples in words; `binarization`; `elbo`, `iw_nll`, `num_samples`, `num_examples`,
        `data`, bits/dim) plus `run_dir`, `checkpoint`, `dataset` and the posterior-collapse
        diagnostics of `diagnostic_fields` (`active_units`, `kl_per_dimension`,
        `mutual_information`, ...).

    Raises:
        FileNotFoundError: not a run directory.
        ValueError: data that does not fit the model; split "test" of a run without a test set.
    """
    config = load_run_config(run_dir)
    held_out = held_out_of_run(
        config, dataset, split, data_dir=data_dir, binarize=binarize, dequantize=dequantize, batch_size=batch_size,
    )
    vae = load_run_model(run_dir, checkpoint)
    result = {"run_dir": str(run_dir), "checkpoint": checkpoint, "dataset": dataset or (
        config.test_dataset if split == "test" else config.dataset
    )}
    result.update(score(vae, held_out, num_samples, batch_size, max_examples, seed, verbose, decode_precision))
    result.update(diagnostic_fields(vae, first_examples(held_out, max_examples, batch_size)[0], seed))
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
        "n/a (flow or two-layer posterior)" if result["mutual_information"] is None else f"{result['mutual_information']:.3f}",
    ))
    return rows


def format_table(result: dict) -> str:
    """A readable table of an `evaluate_run` result."""
    given = " -log p(x|y)" if "num_classes" in result else ""
    rows = [
        ("run", result["run_dir"]),
        ("checkpoint", result["checkpoint"]),
        ("dataset", result["dataset"]),
        ("source", result["source"]),
        ("scored", result["scored"]),
        ("binarization", result["binarization"]),
        ("examples", str(result["num_examples"])),
        ("ELBO (nats/image)", f"{result['elbo']:.3f}"),
        (f"IW NLL{given}, K={result['num_samples']} (nats/image)", f"{result['iw_nll']:.3f}"),
        ("decode precision", result.get("decode_precision", "float32")),
    ]
    if "bits_per_dim" in result:
        rows.append(("bits/dim", f"{result['bits_per_dim']:.4f}"))
    elif "bits_per_dim_unavailable" in result:
        rows.append(("bits/dim", result["bits_per_dim_unavailable"]))
    rows.extend(diagnostic_rows(result))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
