"""Evaluating a trained run: the test ELBO and the importance-weighted negative log-likelihood."""

from __future__ import annotations

import math

import tensorflow as tf

from tfvae.diagnostics import posterior_diagnostics
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
        verbose: show a progress bar.

    Returns:
        `{"elbo", "iw_nll", "num_samples", "num_examples", "dataset", "run_dir", "checkpoint"}`
        (per-image nats; `elbo` is a single-sample estimate), plus `bits_per_dim` for RGB data,
        plus the posterior-collapse diagnostics of `diagnostic_fields` (`active_units`,
        `kl_per_dimension`, `mutual_information`, ...).

    Raises:
        FileNotFoundError: not a run directory.
        ValueError: data that does not fit the model.
    """
    config = load_run_config(run_dir)
    vae = load_run_model(run_dir, checkpoint)
    data = load_data(config, dataset=dataset, data_dir=data_dir, binarize=binarize, batch_size=batch_size)
    held_out = data.validation
    if max_examples:
        held_out = held_out.unbatch().take(max_examples).batch(batch_size)
        if data.num_validation is not None:
            count = min(max_examples, data.num_validation)
            held_out = held_out.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
    vae.check_data(held_out, "the evaluation data")
    elbo = vae.evaluate(held_out, verbose=0, return_dict=True)["elbo"]
    nll = vae.importance_weighted_nll(held_out, num_samples=num_samples, seed=seed, verbose=verbose)
    result = {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "dataset": dataset or config.dataset,
        "elbo": float(elbo),
        "iw_nll": float(nll.mean()),
        "num_samples": int(num_samples),
        "num_examples": int(len(nll)),
    }
    result.update(diagnostic_fields(vae, held_out, seed))
    if vae.image_shape[-1] == 3:
        discrete = isinstance(vae.likelihood, BernoulliLikelihood)
        result["bits_per_dim"] = bits_per_dim(result["iw_nll"], vae.image_shape, discrete)
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
        f"{result['mutual_information']:.3f}",
    ))
    return rows


def format_table(result: dict) -> str:
    """A readable table of an `evaluate_run` result."""
    rows = [
        ("run", result["run_dir"]),
        ("checkpoint", result["checkpoint"]),
        ("dataset", result["dataset"]),
        ("examples", str(result["num_examples"])),
        ("ELBO (nats/image)", f"{result['elbo']:.3f}"),
        (f"IW NLL, K={result['num_samples']} (nats/image)", f"{result['iw_nll']:.3f}"),
    ]
    if "bits_per_dim" in result:
        rows.append(("bits/dim", f"{result['bits_per_dim']:.4f}"))
    rows.extend(diagnostic_rows(result))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
