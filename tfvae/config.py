"""Training settings that need no TensorFlow: the command line parses its flags with them first.

`tfvae --help` and flag errors must answer without the seconds TensorFlow takes to import, so
the names and checks the parser and `TrainConfig` use live here, importing nothing heavy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

STRATEGY_NAMES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
#: The TrainConfig fields that are arguments of `tfvae.data.load`.
DATA_FIELDS = (
    "data_dir", "binarize", "threshold", "image_size", "channels", "validation_fraction", "cache", "shuffle_buffer",
    "dequantize", "test_dataset", "holdout",
)
#: How a source without a validation split holds its validation examples out of the training
#: data (`tfvae.data.load`'s `holdout`): "random", a seeded random slice; "last", the last
#: examples in stored order (the VampPrior paper's MNIST protocol: the first 50,000 train, the
#: last 10,000 validate).
HOLDOUT_MODES = ("random", "last")
#: Examples in the training data's shuffle buffer (`tfvae.data.load`'s default).
DEFAULT_SHUFFLE_BUFFER = 10_000


def check_holdout(holdout) -> str:
    """Returns `holdout` if it is one of `HOLDOUT_MODES`.

    Raises:
        ValueError: any other value, naming the choices.
    """
    if holdout not in HOLDOUT_MODES:
        raise ValueError(f"Expected holdout to be one of {list(HOLDOUT_MODES)}. Received: holdout={holdout!r}")
    return holdout


def check_mixed_precision(policy: str | None) -> str | None:
    """Returns `policy` if it is None or one of `MIXED_PRECISION_POLICIES`.

    Raises:
        ValueError: any other value.
    """
    if policy is not None and policy not in MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"Expected mixed_precision to be one of {list(MIXED_PRECISION_POLICIES)} or None. "
            f"Received: mixed_precision={policy!r}"
        )
    return policy


def check_training_options(strategy: str, mixed_precision: str | None, jit_compile: bool) -> None:
    """Checks the distribution options of a training run (`tfvae train`) without acting on them.

    XLA (`jit_compile=True`) is allowed only with the `default` and `one_device` strategies:
    under a strategy Keras compiles the whole replicated step, `strategy.run` included, as one
    XLA function, which cannot reach the other replicas' variables (MirroredStrategy fails with
    "Trying to access resource ... located in device ..."), and TPUStrategy compiles with XLA
    anyway.

    Raises:
        ValueError: an unknown strategy or policy, a non-bool jit_compile, or XLA with a
            distributing strategy.
    """
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"Unknown strategy '{strategy}'. Expected one of {list(STRATEGY_NAMES)}.")
    check_mixed_precision(mixed_precision)
    if not isinstance(jit_compile, bool):
        raise ValueError(
            f"Expected jit_compile to be a bool. Received: jit_compile={jit_compile!r}"
        )
    if jit_compile and strategy not in ("default", "one_device"):
        raise ValueError(
            "Expected jit_compile (XLA) only with strategy 'default' or 'one_device': Keras "
            "compiles the whole replicated step as one XLA function, which fails under "
            f"'{strategy}'. Received: jit_compile=True with strategy '{strategy}'."
        )


#: The likelihood names `tfvae train` accepts (the registry of `tfvae.distributions`).
LIKELIHOOD_NAMES = (
    "bernoulli", "categorical", "continuous_bernoulli", "discretized_logistic", "gaussian",
    "gaussian_predicted_scale",
)

#: The prior names `tfvae train` accepts (the registry `tfvae.distributions.PRIORS`).
PRIOR_NAMES = ("mixture", "standard_normal", "vamp")
#: p(z|y) of a conditional model: N(0, I) for every class, or a learned Gaussian per class
#: (`tfvae.ConditionalVAE`'s class_prior).
CLASS_PRIOR_NAMES = ("standard_normal", "learned")


#: The posterior names `tfvae train` accepts (the registry of `tfvae.distributions.POSTERIORS`).
POSTERIOR_NAMES = ("diagonal_gaussian", "iaf")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_ints(name: str, value) -> tuple[int, ...]:
    """A tuple of ints >= 1 from a sequence or from the flags' text, e.g. "32,64".

    Raises:
        ValueError: anything else (a string is never split into characters).
    """
    values = value
    if isinstance(value, str):
        try:
            values = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            values = None
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(_is_number(v) and int(v) == v and v >= 1 for v in values)
    ):
        raise ValueError(
            f"Expected {name} to be positive integers, as a list or as text such as \"32,64\". "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


def _image_size(value) -> tuple[int, int]:
    """(height, width) from a pair, one size (16 -> (16, 16)) or the flag's text ("16x16", "16").

    Raises:
        ValueError: anything else.
    """
    size = value
    if isinstance(value, str):
        try:
            size = [int(part) for part in value.lower().replace("x", ",").split(",")]
        except ValueError:
            size = None
    if _is_number(size):
        size = [size, size]
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = list(size) * 2
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(_is_number(s) and int(s) == s and s >= 1 for s in size)
    ):
        raise ValueError(
            "Expected image_size to be HEIGHTxWIDTH or one size, e.g. \"64x64\", [64, 64] or 32. "
            f"Received: image_size={value!r}"
        )
    return (int(size[0]), int(size[1]))


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json` in the run directory.

    Attributes:
        dataset, data_dir, binarize, threshold, image_size, channels, validation_fraction,
            cache, shuffle_buffer, dequantize, test_dataset, holdout: the data, as the arguments
            of `tfvae.data.load` (default: the built-in digits, as stored, no test set, a random
            held-out slice). A run with a test_dataset scores it once, after training, into
            `test_metrics.json`.
        conditional: bool. Train on `(images, labels)` batches (`tfvae.data.load(...,
            labels=True)`): the data must have labels; the run records their num_classes.
        num_classes: int or None. The classes of a conditional run's data, recorded by the run
            (None for an unconditional run).
        class_prior: str. p(z|y) of a conditional run, a name in `CLASS_PRIOR_NAMES`:
            "standard_normal" (N(0, I) for every class) or "learned" (a Gaussian per class).
        stochastic_layers: int. 1 (a `tfvae.VAE`, or a `tfvae.ConditionalVAE`) or 2 (a
            `tfvae.TwoLayerVAE`: p(x|z1) p(z1|z2) p(z2), not conditional; no free bits, no DReG).
        latent_dim: int. The size of z; with 2 stochastic layers, D1, the size of z1 (the layer
            near the data).
        top_latent_dim: int or None. D2, the size of z2 (the top layer, where the prior sits) of a
            two-layer model; None: the same as latent_dim. Only with stochastic_layers=2.
        filters: tuple of ints. The encoder's conv channels; the decoder mirrors them.
        hidden_units: int or None. An extra dense layer in encoder and decoder (None: none); with
            2 stochastic layers the width of every hidden dense layer (None: the builder's
            default, `tfvae.models.two_layer.DEFAULT_HIDDEN_UNITS`, 300).
        likelihood: str. A name in `tfvae.distributions.LIKELIHOODS` ("bernoulli", "gaussian",
            "discretized_logistic", ...).
        likelihood_components: int or None. M, the mixture components of the
            "discretized_logistic" likelihood (None: its default, 5).
        posterior: str. A name in `tfvae.distributions.POSTERIORS` ("diagonal_gaussian", "iaf").
        iaf_steps, iaf_context_units: int or None. T flow steps and the context width H of the
            "iaf" posterior (None: its defaults, 2 and 16).
        prior: str. A name in `tfvae.distributions.PRIORS` ("standard_normal", "mixture",
            "vamp").
        prior_components: int or None. M of the "mixture" prior or K, the pseudo-inputs of the
            "vamp" prior (None: their defaults, 10 and 500).
        beta: float. Weight of the KL term (the target of a KL schedule).
        kl_schedule, kl_warmup, kl_cycle, free_bits, iw_samples, gradient_estimator: the training
            objective; see `check_objective_settings` and `tfvae.training.build_objective`.
        epochs: int. The total number of epochs of the run (a resumed run ends there too).
        batch_size: int. The global batch size.
        learning_rate: float. Adam's learning rate.
        seed: int. Seeds weights, noise, shuffling and the pictures.
        run_dir: str or None. Where the run is written (default `runs/<dataset>-<time>`).
        strategy: str. A `tfvae.distribute.get_strategy` name ("default", "mirrored",
            "multi_worker", ...).
        mixed_precision: None, "mixed_float16" or "mixed_bfloat16".
        jit_compile: bool. Compile the train step with XLA (default/one_device strategies).
        preset: str or None. The `tfvae.presets` preset the settings started from, recorded in
            config.json (`tfvae train --preset`, `tfvae.presets.preset_config`); setting it here
            applies nothing.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    binarize: str = "none"
    threshold: float | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    validation_fraction: float = 0.1
    cache: str = "auto"
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    test_dataset: str | None = None
    holdout: str = "random"
    conditional: bool = False
    num_classes: int | None = None
    class_prior: str = "standard_normal"
    stochastic_layers: int = 1
    latent_dim: int = 8
    top_latent_dim: int | None = None
    filters: tuple[int, ...] = (32, 64)
    hidden_units: int | None = 256
    likelihood: str = "bernoulli"
    likelihood_components: int | None = None
    dequantize: bool = False
    posterior: str = "diagonal_gaussian"
    iaf_steps: int | None = None
    iaf_context_units: int | None = None
    prior: str = "standard_normal"
    prior_components: int | None = None
    beta: float = 1.0
    # --- The training objective (issue 12); checked by check_objective_settings, built by
    # tfvae.training.build_objective. kl_warmup and kl_cycle are in epochs (fractions allowed).
    kl_schedule: str = "constant"
    kl_warmup: float = 0.0
    kl_cycle: float = 0.0
    free_bits: float = 0.0
    iw_samples: int = 1
    gradient_estimator: str = "standard"
    # --- end of the training objective
    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    run_dir: str | None = None
    strategy: str = "default"
    mixed_precision: str | None = None
    jit_compile: bool = False
    preset: str | None = None

    def __post_init__(self):
        self.filters = _positive_ints("filters", self.filters)
        check_training_options(self.strategy, self.mixed_precision, self.jit_compile)
        if self.image_size is not None:
            self.image_size = _image_size(self.image_size)
        for name in ("epochs", "batch_size", "latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
        self._check_stochastic_layers()
        check_holdout(self.holdout)
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise ValueError(
                f"Expected likelihood to be one of {list(LIKELIHOOD_NAMES)}. Received: likelihood={self.likelihood!r}"
            )
        if self.likelihood_components is not None and (
            isinstance(self.likelihood_components, bool)
            or not isinstance(self.likelihood_components, int)
            or self.likelihood_components < 1
        ):
            raise ValueError(
                "Expected likelihood_components to be an integer >= 1 or None. "
                f"Received: likelihood_components={self.likelihood_components!r}"
            )
        if self.posterior not in POSTERIOR_NAMES:
            raise ValueError(
                f"Expected posterior to be one of {list(POSTERIOR_NAMES)}. Received: posterior={self.posterior!r}"
            )
        for name in ("iaf_steps", "iaf_context_units"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1 or None. Received: {name}={value!r}")
            if self.posterior != "iaf":
                raise ValueError(
                    f"Expected {name} only with posterior 'iaf'. Received: {name}={value!r} with "
                    f"posterior {self.posterior!r}"
                )
        if self.prior not in PRIOR_NAMES:
            raise ValueError(f"Expected prior to be one of {list(PRIOR_NAMES)}. Received: prior={self.prior!r}")
        if self.prior_components is not None and (
            isinstance(self.prior_components, bool)
            or not isinstance(self.prior_components, int)
            or self.prior_components < 1
        ):
            raise ValueError(
                "Expected prior_components to be an integer >= 1 or None. "
                f"Received: prior_components={self.prior_components!r}"
            )
        if self.prior_components is not None and self.prior == "standard_normal":
            raise ValueError(
                "Expected prior_components only with a prior that has components (mixture, "
                "vamp). Received: prior='standard_normal' with prior_components="
                f"{self.prior_components!r}"
            )
        if not isinstance(self.dequantize, bool):
            raise ValueError(f"Expected dequantize to be true or false. Received: dequantize={self.dequantize!r}")
        if self.test_dataset is not None and (not isinstance(self.test_dataset, str) or not self.test_dataset):
            raise ValueError(
                f"Expected test_dataset to be a source (a path or a dataset name) or None. Received: "
                f"test_dataset={self.test_dataset!r}"
            )
        if not isinstance(self.conditional, bool):
            raise ValueError(f"Expected conditional to be true or false. Received: conditional={self.conditional!r}")
        if self.num_classes is not None and (
            not self.conditional or isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 2
        ):
            raise ValueError(
                "Expected num_classes to be None, or an integer >= 2 with conditional=True (a conditional run "
                f"records it from its data). Received: num_classes={self.num_classes!r}, "
                f"conditional={self.conditional!r}"
            )
        if self.class_prior not in CLASS_PRIOR_NAMES:
            raise ValueError(
                f"Expected class_prior to be one of {list(CLASS_PRIOR_NAMES)}. Received: class_prior={self.class_prior!r}"
            )
        if self.class_prior != "standard_normal" and not self.conditional:
            raise ValueError(
                "Expected class_prior only with conditional=True (a prior per class needs labels). "
                f"Received: class_prior={self.class_prior!r}, conditional=False"
            )
        if self.conditional and self.stochastic_layers == 2:
            raise ValueError(
                "Expected stochastic_layers=1 with conditional=True (the two-layer model, tfvae.TwoLayerVAE, "
                "is not conditional). Received: stochastic_layers=2, conditional=True"
            )
        # `inf` passes `> 0` but makes the first step's loss NaN; reject it where it enters.
        if not (_is_number(self.learning_rate) and 0 < self.learning_rate < math.inf):
            raise ValueError(
                f"Expected learning_rate > 0 and finite. Received: learning_rate={self.learning_rate!r}"
            )
        if not (_is_number(self.beta) and 0 <= self.beta < math.inf):
            raise ValueError(f"Expected beta to be a finite number >= 0. Received: beta={self.beta!r}")
        if self.preset is not None:
            from tfvae.presets import get_preset  # noqa: PLC0415 (tfvae.presets imports this module)

            get_preset(self.preset)  # raises for an unknown name
        check_objective_settings(self)

    def _check_stochastic_layers(self) -> None:
        """Raises ValueError for a bad stochastic_layers or top_latent_dim, or a two-layer model
        asked to be conditional (free bits and DReG are refused by `check_objective_settings`)."""
        if isinstance(self.stochastic_layers, bool) or not isinstance(self.stochastic_layers, int) or self.stochastic_layers not in (1, 2):
            raise ValueError(
                f"Expected stochastic_layers to be 1 or 2. Received: stochastic_layers={self.stochastic_layers!r}"
            )
        if self.top_latent_dim is None:
            return
        if isinstance(self.top_latent_dim, bool) or not isinstance(self.top_latent_dim, int) or self.top_latent_dim < 1:
            raise ValueError(
                f"Expected top_latent_dim to be an integer >= 1 or None. Received: top_latent_dim={self.top_latent_dim!r}"
            )
        if self.stochastic_layers != 2:
            raise ValueError(
                "Expected top_latent_dim only with stochastic_layers=2 (it is the size of z2). Received: "
                f"top_latent_dim={self.top_latent_dim!r} with stochastic_layers={self.stochastic_layers!r}"
            )

    @classmethod
    def from_dict(cls, values: dict, source: str = "the configuration") -> TrainConfig:
        """Builds a config from a dict whose keys are field names (dashes allowed).

        Raises:
            ValueError: an unknown key, or a value the fields reject.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        normalized = {str(key).replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(normalized) - known)
        if unknown:
            raise ValueError(
                f"Unknown setting(s) {unknown} in {source}. Expected keys among {sorted(known)}."
            )
        return cls(**normalized)


KL_SCHEDULES = ("constant", "linear", "cyclical")
GRADIENT_ESTIMATORS = ("standard", "dreg")


def check_objective_settings(config) -> None:
    """Raises ValueError for a bad objective setting of a TrainConfig, or a refused combination.

    The importance-weighted bound (iw_samples > 1) has no separate KL term, so beta != 1, a KL
    schedule and free bits are refused with it; DReG is an estimator for iw_samples > 1. With
    posterior "iaf" or with 2 stochastic layers free bits and DReG are refused (q(z|x) neither
    factorizes nor is re-evaluable as one diagonal Gaussian).
    """
    if config.kl_schedule not in KL_SCHEDULES:
        raise ValueError(f"Expected kl_schedule in {list(KL_SCHEDULES)}. Received: kl_schedule={config.kl_schedule!r}")
    if config.gradient_estimator not in GRADIENT_ESTIMATORS:
        raise ValueError(
            f"Expected gradient_estimator in {list(GRADIENT_ESTIMATORS)}. "
            f"Received: gradient_estimator={config.gradient_estimator!r}"
        )
    for name in ("kl_warmup", "kl_cycle", "free_bits"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
            raise ValueError(f"Expected {name} to be a finite number >= 0. Received: {name}={value!r}")
    if isinstance(config.iw_samples, bool) or not isinstance(config.iw_samples, int) or config.iw_samples < 1:
        raise ValueError(f"Expected iw_samples to be an integer >= 1. Received: iw_samples={config.iw_samples!r}")
    needs = {"linear": "kl_warmup", "cyclical": "kl_cycle"}
    for name in ("kl_warmup", "kl_cycle"):
        if name == needs.get(config.kl_schedule) and not getattr(config, name) > 0:
            raise ValueError(
                f"Expected {name} > 0 epochs with kl_schedule={config.kl_schedule!r}. Received: {name}={getattr(config, name)!r}"
            )
        if name != needs.get(config.kl_schedule) and getattr(config, name) != 0:
            wanted = [schedule for schedule, setting in needs.items() if setting == name][0]
            raise ValueError(
                f"Expected {name} only with kl_schedule={wanted!r}. Received: {name}={getattr(config, name)!r} "
                f"with kl_schedule={config.kl_schedule!r}"
            )
    if config.iw_samples > 1:
        refused = {
            "beta": config.beta != 1, "kl_schedule": config.kl_schedule != "constant", "free_bits": config.free_bits > 0,
        }
        for name, is_set in refused.items():
            if is_set:
                raise ValueError(
                    f"Expected no {name} with iw_samples > 1 (the importance-weighted bound has no separate KL "
                    f"term). Received: {name}={getattr(config, name)!r} and iw_samples={config.iw_samples}"
                )
    elif config.gradient_estimator == "dreg":
        raise ValueError(
            "Expected iw_samples > 1 with gradient_estimator='dreg' (an estimator of the importance-weighted "
            f"bound's gradient). Received: iw_samples={config.iw_samples}"
        )
    if getattr(config, "stochastic_layers", 1) == 2:
        # q(z1, z2|x) = q(z1|x, z2) q(z2|x) is not one diagonal Gaussian (as tfvae.TwoLayerVAE refuses).
        if config.free_bits > 0:
            raise ValueError(
                "Expected no free_bits with stochastic_layers=2 (free bits need a per-dimension KL; the "
                f"two-layer posterior does not factorize). Received: free_bits={config.free_bits!r}"
            )
        if config.gradient_estimator == "dreg":
            raise ValueError(
                "Expected gradient_estimator 'standard' with stochastic_layers=2 (DReG re-evaluates "
                "log q(z|x) at a given z as one diagonal Gaussian). Received: gradient_estimator='dreg'"
            )
    if getattr(config, "posterior", "diagonal_gaussian") == "iaf":
        # q(z|x) of a flow neither factorizes over dimensions nor can be re-evaluated at a given z.
        if config.free_bits > 0:
            raise ValueError(
                "Expected no free_bits with posterior 'iaf' (free bits need a per-dimension KL). "
                f"Received: free_bits={config.free_bits!r}"
            )
        if config.gradient_estimator == "dreg":
            raise ValueError(
                "Expected gradient_estimator 'standard' with posterior 'iaf' (DReG re-evaluates log q(z|x) "
                "at a given z). Received: gradient_estimator='dreg'"
            )


def read_config_file(path: str | os.PathLike) -> dict:
    """Reads a JSON or YAML file of settings (a mapping).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not parseable, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a JSON or YAML config file. Received: '{path}', which does not exist.")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # yaml and json raise their own types
        raise ValueError(f"Could not parse the config file '{path}': {error}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"Expected the config file '{path}' to hold a mapping of settings. "
            f"Received: {type(values).__name__}"
        )
    return values
