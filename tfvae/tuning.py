"""Choosing the latent size (and learning rate, beta, free bits, K, filters, batch size) with keras-tuner.

`VAEHyperModel` is the search space; `tune(config)` is the job behind `tfvae tune`, which writes
a tuning run directory:

    tuning.json                 the settings (a run is resumed only with the same ones)
    tuner/                      keras-tuner's project: oracle.json, trial_*/ (resumable)
    trials.csv                  one row per trial: its hyperparameters and best objective value
    objective_by_latent_dim.png the objective of every completed trial against its latent size
    best/model.keras            the best trial's model, at its best epoch
    best/saved_model/           the same model as a SavedModel (`tfvae.export_saved_model`)
    best/summary.json           the best trial, its hyperparameters and objective value
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import keras_tuner
import tensorflow as tf

from tfvae import interrupts, pictures
from tfvae.callbacks import StopOnNonFiniteLoss
from tfvae.data.pipeline import source_short_name
from tfvae.distributions import (
    get_likelihood,
    get_posterior,
    get_prior,
    likelihood_name,
    posterior_name,
    prior_name,
)
from tfvae.export import export_saved_model
from tfvae.files import atomic_path, write_bytes_atomic, write_json_atomic
from tfvae.models import build_conv_two_layer_vae, build_conv_vae
from tfvae.models.two_layer import DEFAULT_HIDDEN_UNITS
from tfvae.objectives import ELBO, GRADIENT_ESTIMATORS, IWAE
from tfvae.training import TrainConfig, load_data

#: The objective every tuner of this module minimizes unless told otherwise: -ELBO on validation.
DEFAULT_OBJECTIVE = keras_tuner.Objective("val_loss", direction="min")
#: The comparison when the training objective itself is searched (beta, free bits, K): the
#: validation ELBO at beta = 1, never the trained loss, which differs between the objectives.
ELBO_OBJECTIVE = keras_tuner.Objective("val_elbo", direction="max")
TUNERS = ("random", "bayesian", "hyperband", "grid")
SETTINGS_FILE = "tuning.json"
TUNER_DIR = "tuner"
TABLE_FILE = "trials.csv"
PLOT_FILE = "objective_by_latent_dim.png"
BEST_DIR = "best"


def _choices(name: str, values, kind, minimum: float, allow_equal: bool = True) -> tuple:
    """`values` as a non-empty tuple of numbers of `kind` above `minimum`, or a ValueError."""
    values = tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else ()
    good = bool(values) and all(
        not isinstance(v, bool) and isinstance(v, kind) and (v >= minimum if allow_equal else v > minimum)
        for v in values
    )
    if not good:
        bound = f">= {minimum}" if allow_equal else f"> {minimum}"
        raise ValueError(
            f"Expected {name} to be a non-empty sequence of numbers {bound}. Received: {name}={values!r}"
        )
    return values


def _filters_key(filters: Sequence[int]) -> str:
    return ",".join(str(f) for f in filters)


class VAEHyperModel(keras_tuner.HyperModel):
    """A search space of convolutional VAEs (`tfvae.build_conv_vae`) for keras-tuner.

    Every argument that takes a sequence lists the candidates of one hyperparameter. The latent
    size is always the hyperparameter `"latent_dim"` (`hp.Choice`); the others are searched
    (`"learning_rate"`, `"beta"`, `"free_bits"`, `"iw_samples"`, `"filters"`, `"batch_size"`,
    `"stochastic_layers"`) only when given more than one candidate, and are fixed otherwise. `build(hp)` returns a built
    and compiled `tfvae.VAE`, so keras-tuner can load a trial's weights into it
    (`tuner.get_best_models()`).

    The training objective is `tfvae.objectives.ELBO(beta, free_bits=...)` when K (`iw_samples`)
    is 1 and `tfvae.objectives.IWAE(K, gradient_estimator)` when K > 1; beta and free bits are
    drawn only for K = 1 (conditional hyperparameters), since the IWAE bound has no KL term.
    Trials that train different objectives are compared by `default_objective`: the validation
    ELBO (or, afterwards, `vae.importance_weighted_nll`), never the trained loss.

    Args:
        image_shape: `(H, W, C)`, the shape of one image (e.g. `DataSplits.image_shape`).
        latent_dims: ints >= 1. Candidate latent sizes.
        likelihood: a name in `tfvae.distributions.LIKELIHOODS`, or a sequence of candidate
            names. Search several only where their losses are in the same units: the 8-bit
            likelihoods (categorical, discretized_logistic) on 8-bit data, or the continuous
            ones on the same (dequantized) data.
        likelihood_components: int or None. M of the "discretized_logistic" candidate (None: 5).
        posterior: a name in `tfvae.distributions.POSTERIORS`, or a sequence of candidate names
            ("diagonal_gaussian", "iaf"); "iaf" is refused with free bits > 0 or DReG.
        posterior_settings: dict or None. Constructor arguments of the "iaf" candidate
            (`steps`, `context_units`, ...).
        prior: a name in `tfvae.distributions.PRIORS` ("standard_normal", "mixture", "vamp"), or
            a sequence of candidate names (searched as the `prior` hyperparameter; the ELBOs of
            all priors are in the same units).
        prior_components: int or None. M of the "mixture" or K of the "vamp" candidate (None:
            their defaults, 10 and 500).
        learning_rates: floats > 0. Candidate learning rates of Adam.
        betas: floats >= 0. Candidate weights of the KL term.
        free_bits: floats >= 0. Candidate free bits (nats per latent dimension; 0 is off).
        iw_samples: ints >= 1. Candidate K; K > 1 trains the importance-weighted bound.
        gradient_estimator: "standard" or "dreg", the encoder gradient when K > 1.
        filters: sequences of ints. Candidate encoder channels (the decoder mirrors them); H and W
            must be divisible by `2 ** len(filters)` for each.
        hidden_units: int or None. An extra dense layer in encoder and decoder. The two-layer
            model's hidden layers (`build_conv_two_layer_vae`) have this width,
            `DEFAULT_HIDDEN_UNITS` (300) when None.
        stochastic_layers: ints in {1, 2}. Candidate numbers of stochastic layers: 1 builds a
            `tfvae.VAE`, 2 a `tfvae.TwoLayerVAE` with `latent_dim` units in each layer (the prior
            on the top one); 2 is refused with free bits > 0 or DReG.
        batch_sizes: ints >= 1, or None to keep the batch size of the data. With several, `fit`
            rebatches a `tf.data.Dataset` (or passes `batch_size` for arrays).
        seed: int or None. `build` resets Keras's global seeds to it (`keras.utils.set_random_seed`)
            and seeds the model's noise with it, so every trial starts alike.
        num_classes: None, or int >= 2 for conditional VAEs (`tfvae.ConditionalVAE`), trained
            and validated on `(images, labels)`.
        class_prior: "standard_normal" or "learned" (see `tfvae.ConditionalVAE`), or both as
            candidates of the `class_prior` hyperparameter. Only with num_classes.

    Raises:
        ValueError: an empty or invalid list of candidates, or an invalid likelihood.

    Example:

    >>> hypermodel = VAEHyperModel((8, 8, 1), latent_dims=(2, 8, 16))  # doctest: +SKIP
    >>> tuner = keras_tuner.RandomSearch(hypermodel, objective="val_loss", max_trials=3)
    >>> tuner.search(data.train, validation_data=data.validation, epochs=5)
    >>> best_vae = tuner.get_best_models(1)[0]
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dims: Sequence[int] = (2, 8, 16, 32),
        likelihood: str | Sequence[str] = "bernoulli",
        likelihood_components: int | None = None,
        prior: str | Sequence[str] = "standard_normal",
        prior_components: int | None = None,
        learning_rates: Sequence[float] = (1e-3,),
        posterior: str | Sequence[str] = "diagonal_gaussian",
        posterior_settings: dict | None = None,
        betas: Sequence[float] = (1.0,),
        free_bits: Sequence[float] = (0.0,),
        iw_samples: Sequence[int] = (1,),
        gradient_estimator: str = "standard",
        filters: Sequence[Sequence[int]] = ((32, 64),),
        hidden_units: int | None = None,
        batch_sizes: Sequence[int] | None = None,
        stochastic_layers: Sequence[int] = (1,),
        seed: int | None = 0,
        name: str | None = "vae",
        num_classes: int | None = None,
        class_prior: str | Sequence[str] = "standard_normal",
    ):
        super().__init__(name=name)
        self.image_shape = tuple(image_shape)
        self.latent_dims = _choices("latent_dims", latent_dims, int, 1)
        self.learning_rates = _choices("learning_rates", learning_rates, (int, float), 0, allow_equal=False)
        self.betas = _choices("betas", betas, (int, float), 0)
        self.free_bits = _choices("free_bits", free_bits, (int, float), 0)
        self.iw_samples = _choices("iw_samples", iw_samples, int, 1)
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(
                f"Expected gradient_estimator in {list(GRADIENT_ESTIMATORS)}. "
                f"Received: gradient_estimator={gradient_estimator!r}"
            )
        self.gradient_estimator = gradient_estimator
        if not filters or not all(isinstance(f, Sequence) and f and all(
                isinstance(c, int) and c >= 1 for c in f) for f in filters):
            raise ValueError(
                "Expected filters to be a non-empty sequence of channel lists such as ((32, 64),). "
                f"Received: filters={filters!r}"
            )
        self.filters = {_filters_key(f): tuple(f) for f in filters}
        self.batch_sizes = None if batch_sizes is None else _choices("batch_sizes", batch_sizes, int, 1)
        self.stochastic_layers = _choices("stochastic_layers", stochastic_layers, int, 1)
        if not set(self.stochastic_layers) <= {1, 2}:
            raise ValueError(f"Expected stochastic_layers in (1, 2). Received: stochastic_layers={stochastic_layers!r}")
        if 2 in self.stochastic_layers and (max(self.free_bits) > 0 or gradient_estimator == "dreg"):
            raise ValueError(
                "Expected no free bits and no DReG with two stochastic layers: both need q(z|x) to be "
                f"one diagonal Gaussian. Received: free_bits={list(self.free_bits)}, "
                f"gradient_estimator={gradient_estimator!r}"
            )
        names = (likelihood,) if isinstance(likelihood, str) else tuple(likelihood)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"Expected likelihood to be a name or a sequence of names. Received: likelihood={likelihood!r}")
        self.likelihoods = tuple(likelihood_name(get_likelihood(name)) for name in names)  # raises on unknown names
        self.likelihood_components = likelihood_components
        names = (prior,) if isinstance(prior, str) else tuple(prior)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"Expected prior to be a name or a sequence of names. Received: prior={prior!r}")
        self.priors = tuple(prior_name(get_prior(name)) for name in names)  # raises on unknown names
        self.prior_components = prior_components
        if prior_components is not None and self.priors == ("standard_normal",):
            raise ValueError(
                "Expected prior_components only with a prior that takes components (mixture, "
                f"vamp). Received: prior={prior!r}"
            )
        self.hidden_units = hidden_units
        self.seed = seed
        self.num_classes = num_classes
        self.class_priors = (class_prior,) if isinstance(class_prior, str) else tuple(class_prior)
        for candidate in self.class_priors:  # raises on bad classes or class priors
            build_conv_vae(
                self.image_shape, self.latent_dims[0], filters=next(iter(self.filters.values())),
                num_classes=num_classes, class_prior=candidate,
            )
        # Fails now, not in the first trial, when the shapes do not fit (e.g. too many filters).
        for channels in self.filters.values():
            build_conv_vae(self.image_shape, self.latent_dims[0], filters=channels, hidden_units=hidden_units)
        if likelihood_components is not None and not any(
            "components" in get_likelihood(name).settings() for name in self.likelihoods
        ):
            raise ValueError(
                "Expected likelihood_components only with a likelihood that takes components "
                f"(discretized_logistic). Received: likelihood={likelihood!r}"
            )
        for name in self.likelihoods:
            self._likelihood(name)
        names = (posterior,) if isinstance(posterior, str) else tuple(posterior)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"Expected posterior to be a name or a sequence of names. Received: posterior={posterior!r}")
        self.posterior_settings = dict(posterior_settings or {})
        self.posteriors = tuple(posterior_name(self._posterior(name)) for name in names)  # raises on unknown names
        flows = [name for name in self.posteriors if not self._posterior(name).factorized]
        if flows and (max(self.free_bits) > 0 or self.gradient_estimator == "dreg"):
            raise ValueError(
                f"Expected no free bits and no DReG with the posterior(s) {flows}: free bits need a "
                "per-dimension KL, DReG a re-evaluable log q(z|x). Received: "
                f"free_bits={list(self.free_bits)}, gradient_estimator={self.gradient_estimator!r}"
            )

    def _posterior(self, name: str):
        """The posterior `name`, with `posterior_settings` when it is not the diagonal Gaussian."""
        return get_posterior(name, **(self.posterior_settings if name != "diagonal_gaussian" else {}))

    def _likelihood(self, name: str):
        """The likelihood `name`, with `likelihood_components` when it takes them."""
        settings = {}
        if self.likelihood_components is not None and "components" in get_likelihood(name).settings():
            settings["components"] = self.likelihood_components
        return get_likelihood(name, **settings)

    def _prior(self, name: str):
        """The prior `name`, with `prior_components` (and the seed) when it takes them."""
        if name == "standard_normal":
            return get_prior(name)
        settings = {"seed": self.seed}
        if self.prior_components is not None:
            settings["components"] = self.prior_components
        return get_prior(name, **settings)

    @property
    def default_objective(self) -> keras_tuner.Objective:
        """`val_elbo` (max) when beta, free bits or K is searched, else `val_loss` (min)."""
        if any(len(candidates) > 1 for candidates in (self.betas, self.free_bits, self.iw_samples)):
            return ELBO_OBJECTIVE
        return DEFAULT_OBJECTIVE

    def _training_objective(self, hp):
        num_samples = self._pick(hp, "iw_samples", self.iw_samples)
        if num_samples > 1:
            return IWAE(int(num_samples), self.gradient_estimator)
        # beta and free bits exist only for K = 1 trials when K is searched.
        scope = hp.conditional_scope("iw_samples", [1]) if len(self.iw_samples) > 1 else contextlib.nullcontext()
        with scope:
            beta = self._pick(hp, "beta", self.betas)
            free_bits = self._pick(hp, "free_bits", self.free_bits)
        return ELBO(float(beta), free_bits=float(free_bits))

    @staticmethod
    def _pick(hp, name: str, candidates: Sequence):
        """`hp.Choice(name, candidates)`, or the only candidate (not a hyperparameter then)."""
        return hp.Choice(name, list(candidates)) if len(candidates) > 1 else candidates[0]

    def build(self, hp) -> keras.Model:
        """Builds and compiles the VAE of the hyperparameters `hp`.

        Args:
            hp: `keras_tuner.HyperParameters`.

        Returns:
            A built `tfvae.VAE` (a `tfvae.ConditionalVAE` with `num_classes`, a
            `tfvae.TwoLayerVAE` for 2 stochastic layers), compiled with Adam (whose variables are
            built).
        """
        if self.seed is not None:
            # Every trial starts from the same random state, whatever ran before it (an earlier
            # trial, or nothing in a resumed search), so trials differ by their hyperparameters.
            keras.utils.set_random_seed(self.seed)
        latent_dim = hp.Choice("latent_dim", list(self.latent_dims))
        filters = self.filters[self._pick(hp, "filters", list(self.filters))]
        learning_rate = self._pick(hp, "learning_rate", self.learning_rates)
        likelihood = self._likelihood(self._pick(hp, "likelihood", self.likelihoods))
        parts = {
            "filters": filters,
            "likelihood": likelihood,
            "prior": self._prior(self._pick(hp, "prior", self.priors)),
            "objective": self._training_objective(hp),
            "seed": self.seed,
            "posterior": self._posterior(self._pick(hp, "posterior", self.posteriors)),
        }
        if self._pick(hp, "stochastic_layers", self.stochastic_layers) == 2:
            if self.num_classes is not None:
                raise ValueError(
                    "Expected stochastic_layers=(1,) for a conditional search (num_classes): the "
                    f"two-layer model is not conditional. Received: stochastic_layers={self.stochastic_layers}"
                )
            hidden_units = self.hidden_units or DEFAULT_HIDDEN_UNITS
            vae = build_conv_two_layer_vae(self.image_shape, (latent_dim, latent_dim), hidden_units=hidden_units, **parts)
        else:
            vae = build_conv_vae(
                self.image_shape, latent_dim, hidden_units=self.hidden_units, num_classes=self.num_classes,
                class_prior=self._pick(hp, "class_prior", self.class_priors), **parts,
            )
        vae.compile(optimizer=keras.optimizers.Adam(learning_rate))
        # Built now, so that loading a trial's checkpoint restores the optimizer's state too.
        vae.optimizer.build(vae.trainable_variables)
        return vae

    def fit(self, hp, model, x=None, *args, validation_data=None, **kwargs):
        """Trains `model` (`model.fit` arguments), with the batch size of `hp` when it is tuned.

        Returns:
            The `History` of `model.fit`.

        Raises:
            keras_tuner.errors.FailedTrialError: no epoch ended with a finite validation loss
                (the trial diverged); keras-tuner records it as failed and goes on.
        """
        if self.batch_sizes is not None:
            batch_size = self._pick(hp, "batch_size", self.batch_sizes)
            if isinstance(x, tf.data.Dataset):
                x = _rebatch(x, batch_size)
            else:
                kwargs["batch_size"] = batch_size
        history = model.fit(x, *args, validation_data=validation_data, **kwargs)
        watched = [key for key in ("val_loss", "loss") if key in history.history][:1]
        if watched and not any(math.isfinite(v) for v in history.history[watched[0]]):
            raise keras_tuner.errors.FailedTrialError(
                f"The trial's {watched[0]} was never finite: {history.history[watched[0]]}"
            )
        return history


def _rebatch(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """`dataset` (batches `[B, ...]`) in batches of `batch_size`, with a known length when the
    input's is known (one pass to count the examples), so Keras knows the steps per epoch."""
    rebatched = dataset.rebatch(batch_size)
    if dataset.cardinality() < 0:
        return rebatched
    examples = int(dataset.reduce(tf.constant(0, tf.int64), lambda count, batch: count + tf.shape(
        tf.nest.flatten(batch)[0], out_type=tf.int64)[0]))
    return rebatched.apply(tf.data.experimental.assert_cardinality(math.ceil(examples / batch_size)))


def make_tuner(
    hypermodel: keras_tuner.HyperModel,
    tuner: str,
    directory: str | os.PathLike,
    max_trials: int,
    max_epochs: int,
    objective=DEFAULT_OBJECTIVE,
    project_name: str = TUNER_DIR,
    seed: int | None = 0,
    overwrite: bool = False,
) -> keras_tuner.Tuner:
    """A keras-tuner tuner of `hypermodel` by its short name.

    Args:
        hypermodel: e.g. a `VAEHyperModel`.
        tuner: "random" (RandomSearch), "bayesian" (BayesianOptimization), "hyperband"
            (Hyperband: successive halving up to `max_epochs`; it ignores `max_trials`) or "grid"
            (GridSearch: every combination, in order, up to `max_trials`).
        directory: where keras-tuner keeps its project `directory/project_name`.
        max_trials: int >= 1. Trials to run in all (a resumed search counts those done).
        max_epochs: int >= 1. Hyperband's largest budget per model.
        objective: a metric name or `keras_tuner.Objective`. Default: `val_loss` minimized.
        project_name: the project's folder name.
        seed: seeds the tuner's choices.
        overwrite: start afresh even when the project exists (default: resume it).

    Returns:
        The tuner; an existing project in `directory/project_name` is reloaded (resumed).

    Raises:
        ValueError: an unknown tuner name.
    """
    common = dict(objective=objective, seed=seed, directory=str(directory), project_name=project_name,
                  overwrite=overwrite)
    if tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if tuner == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    if tuner == "grid":
        return keras_tuner.GridSearch(hypermodel, max_trials=max_trials, **common)
    if tuner == "hyperband":
        return keras_tuner.Hyperband(hypermodel, max_epochs=max_epochs, **common)
    raise ValueError(f"Expected tuner to be one of {list(TUNERS)}. Received: tuner={tuner!r}")


@dataclasses.dataclass
class TuningConfig:
    """The settings of a tuning run; saved as `tuning.json` in its run directory.

    Attributes:
        train: `TrainConfig`. The data, the fixed model settings and the seed, as for
            `tfvae train`; `epochs` is the number of epochs per trial (Hyperband's largest budget),
            `run_dir` the tuning run directory; `latent_dim` is not used (see `latent_dims`).
        latent_dims: tuple of ints. Candidate latent sizes.
        max_trials: int. Trials to run in all.
        tuner: one of `TUNERS`.
        learning_rates, betas, free_bits, iw_samples, batch_sizes: tuples of candidates, or None
            to keep the `train` value fixed (K > 1 trains `tfvae.objectives.IWAE` with the
            train's `gradient_estimator`).
        posteriors: tuple of posterior names, or None to keep `train.posterior`; the "iaf"
            candidate takes `train.iaf_steps` and `train.iaf_context_units`.
    """

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    latent_dims: tuple[int, ...] = (2, 8, 16, 32)
    max_trials: int = 4
    tuner: str = "random"
    learning_rates: tuple[float, ...] | None = None
    betas: tuple[float, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    free_bits: tuple[float, ...] | None = None
    iw_samples: tuple[int, ...] | None = None
    posteriors: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        for name in ("latent_dims", "learning_rates", "betas", "batch_sizes", "free_bits", "iw_samples", "posteriors"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        if self.tuner not in TUNERS:
            raise ValueError(f"Expected tuner to be one of {list(TUNERS)}. Received: tuner={self.tuner!r}")
        if isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ValueError(f"Expected max_trials to be an integer >= 1. Received: max_trials={self.max_trials!r}")

    def hypermodel(self, image_shape, num_classes: int | None = None) -> VAEHyperModel:
        """The `VAEHyperModel` of these settings for images of `image_shape`; with
        `train.conditional`, of conditional VAEs over the data's `num_classes`."""
        train = self.train
        conditional = {"num_classes": num_classes, "class_prior": train.class_prior} if train.conditional else {}
        return VAEHyperModel(
            image_shape,
            latent_dims=self.latent_dims,
            likelihood=train.likelihood,
            likelihood_components=train.likelihood_components,
            posterior=self.posteriors or (train.posterior,),
            posterior_settings={
                key: value for key, value in
                (("steps", train.iaf_steps), ("context_units", train.iaf_context_units))
                if value is not None
            },
            prior=train.prior,
            prior_components=train.prior_components,
            learning_rates=self.learning_rates or (train.learning_rate,),
            betas=self.betas or (train.beta,),
            free_bits=self.free_bits or (train.free_bits,),
            iw_samples=self.iw_samples or (train.iw_samples,),
            gradient_estimator=train.gradient_estimator,
            filters=(train.filters,),
            hidden_units=train.hidden_units,
            batch_sizes=self.batch_sizes,
            seed=train.seed,
            **conditional,
        )


def default_run_dir(config: TuningConfig) -> Path:
    """`runs/tune-<dataset>-<YYYYmmdd-HHMMSS>` under the working directory."""
    name = source_short_name(config.train.dataset)
    return Path("runs") / f"tune-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _comparable(config: TuningConfig) -> dict:
    """The settings that must match to resume a run (all but max_trials and run_dir)."""
    values = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as in the file
    values.pop("max_trials")
    values["train"].pop("run_dir")
    return values


def prepare_tuning_dir(config: TuningConfig) -> tuple[Path, bool]:
    """Creates the run directory, or checks that an existing one is this run, to resume.

    Returns:
        `(run_dir, resuming)`.

    Raises:
        FileExistsError: the directory holds files and is not a tuning run (nothing is changed).
        ValueError: it is a tuning run with other settings (only max_trials may change).
    """
    run_dir = Path(config.train.run_dir or default_run_dir(config))
    settings_file = run_dir / SETTINGS_FILE
    if settings_file.is_file():
        saved = TuningConfig(**json.loads(settings_file.read_text()))
        before, now = _comparable(saved), _comparable(config)
        changed = sorted(
            [f"train.{key}" for key in now["train"] if now["train"][key] != before["train"].get(key)]
            + [key for key in now if key != "train" and now[key] != before.get(key)]
        )
        if changed:
            raise ValueError(
                f"Expected the settings of the tuning run in '{run_dir}' to resume it (only "
                f"max_trials may change). Received changes to {changed}; choose another --run-dir."
            )
        return run_dir, True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(
            f"Expected a new or empty run directory, or a tuning run to resume. Received: '{run_dir}', "
            f"which holds files but no {SETTINGS_FILE}; choose another --run-dir (nothing was changed)."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False


def trial_rows(tuner: keras_tuner.Tuner) -> list[dict]:
    """One row per trial, in trial order: trial, status, its hyperparameters, best value.

    The objective column is named `best_<objective>` (e.g. `best_val_loss`) and is empty for
    trials that did not complete.
    """
    objective = tuner.oracle.objective.name
    rows = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        row = {"trial": trial_id, "status": trial.status}
        row.update(trial.hyperparameters.values)
        completed = trial.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
        row[f"best_{objective}"] = trial.score if completed and trial.score is not None else ""
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: str | os.PathLike) -> None:
    """Writes `rows` as CSV: trial, status, latent_dim first, the objective last."""
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    first = [c for c in ("trial", "status", "latent_dim") if c in columns]
    last = [c for c in columns if c.startswith("best_")]
    columns = first + [c for c in columns if c not in first and c not in last] + last
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, text.getvalue().encode())


def _objective_label(objective_name: str) -> str:
    if objective_name == "val_loss":
        return "best validation loss (-ELBO, nats per example)"
    return f"best {objective_name}"


def export_best(tuner: keras_tuner.Tuner, best_dir: Path, extra: dict) -> dict:
    """Writes the best trial's model as `.keras` and SavedModel and its summary; returns it."""
    best_trial = tuner.oracle.get_best_trials(1)[0]
    vae = tuner.get_best_models(1)[0]
    with atomic_path(best_dir / "model.keras") as temporary:
        vae.save(temporary)
    export_saved_model(vae, best_dir / "saved_model", overwrite=True, metadata=extra)
    summary = {
        "trial": best_trial.trial_id,
        "hyperparameters": best_trial.hyperparameters.values,
        "objective": tuner.oracle.objective.name,
        "direction": tuner.oracle.objective.direction,
        "best_value": best_trial.score,
        "best_epoch": best_trial.best_step,
        "model": str(best_dir / "model.keras"),
        "saved_model": str(best_dir / "saved_model"),
    }
    write_json_atomic(best_dir / "summary.json", summary)
    return summary


def _completed_trials(tuner: keras_tuner.Tuner) -> int:
    completed = keras_tuner.engine.trial.TrialStatus.COMPLETED
    return sum(trial.status == completed for trial in tuner.oracle.trials.values())


def tune(config: TuningConfig, verbose: int = 1, callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Searches the latent size (and the other tuned settings) and writes a tuning run directory.

    A directory that holds `tuning.json` with the same settings is resumed: completed trials are
    kept, an interrupted trial is run again, and the search goes on up to `max_trials`.

    Args:
        config: the `TuningConfig`.
        verbose: 0 (silent), 1 (progress bars and the tuner's trial tables) or 2 (one line
            per epoch), as `fit`.
        callbacks: extra Keras callbacks for every trial's `fit` (deep-copied per trial).

    Returns:
        A summary: `run_dir`, `resumed`, `trials` (the rows of trials.csv), `best` (the best
        trial, its hyperparameters and value, and the exported files, also in
        `best/summary.json`), `trials_run` (trials completed by this call: 0 when a resumed
        search had reached `max_trials` or had tried every combination of the tuned values).

    Raises:
        ValueError: bad settings or data, or a run directory holding other settings.
        FileExistsError: the run directory holds files and is not a tuning run.
        FileNotFoundError: a missing data file.
        RuntimeError: no trial completed (all failed).
        KeyboardInterrupt: Ctrl-C, even one that TensorFlow's finalizers swallowed
            (`tfvae.interrupts`); the same call resumes the search.
    """
    with interrupts.guard():
        return _tune(config, verbose, callbacks)


def _tune(config: TuningConfig, verbose: int, callbacks: Sequence[keras.callbacks.Callback]) -> dict:
    keras.utils.set_random_seed(config.train.seed)
    data = load_data(config.train)  # first: a bad source must not leave a directory behind
    hypermodel = config.hypermodel(data.image_shape, data.num_classes)
    run_dir, resumed = prepare_tuning_dir(config)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(run_dir)))
    write_json_atomic(run_dir / SETTINGS_FILE, dataclasses.asdict(config))

    tuner = make_tuner(hypermodel, config.tuner, run_dir, config.max_trials, config.train.epochs,
                       objective=hypermodel.default_objective, seed=config.train.seed)
    completed_before = _completed_trials(tuner)
    tuner.search(
        data.train,
        validation_data=data.validation,
        epochs=config.train.epochs,
        callbacks=[interrupts.RaisePendingInterrupt(), StopOnNonFiniteLoss(), *callbacks],
        verbose=verbose,
        shuffle=False,  # the training dataset reshuffles itself every epoch
    )

    rows = trial_rows(tuner)
    write_table(rows, run_dir / TABLE_FILE)
    objective = tuner.oracle.objective.name
    scored = [row for row in rows if row[f"best_{objective}"] != ""]
    if not scored:
        raise RuntimeError(f"No trial of the tuning run in '{run_dir}' completed; see {TABLE_FILE}.")
    pictures.save_tuning_curve(
        [row["latent_dim"] for row in scored],
        [row[f"best_{objective}"] for row in scored],
        run_dir / PLOT_FILE,
        ylabel=_objective_label(objective),
        minimize=tuner.oracle.objective.direction == "min",
    )
    best = export_best(tuner, run_dir / BEST_DIR, {"dataset": config.train.dataset, "tuning_run": str(run_dir)})
    return {"run_dir": str(run_dir), "resumed": resumed, "trials": rows, "best": best,
            "trials_run": _completed_trials(tuner) - completed_before}
