"""Presets: named, documented training configurations shipped with tfvae (`tfvae train --preset`).

A preset is a set of `TrainConfig` fields. It names no data: the user gives `--dataset` (and
`--test-dataset`), so a preset works wherever the files are. Settings are resolved in this order,
each overriding the one before: the `TrainConfig` defaults < the preset < a `--config` file < the
flags typed on the command line. The run records the preset's name in its `config.json`.

TensorFlow-free, like `tfvae.config`: `tfvae train --list-presets` answers at once.
"""

from __future__ import annotations

import dataclasses

from tfvae.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named training configuration.

    Attributes:
        name: str. What `--preset` takes, e.g. "mnist-vae".
        description: str. One line: what it is for.
        settings: dict. `TrainConfig` field -> value; no data source (the user gives it).
        notes: str. How it was chosen and what is measured of it (the README repeats it).
    """

    name: str
    description: str
    settings: dict
    notes: str = ""


#: The model of the MNIST likelihood benchmark's presets: the conv encoder/decoder with filters
#: (32, 64) and no extra dense layer (with two stochastic layers `hidden_units: None` gives the
#: two-layer builder's 300), Bernoulli pixels on
#: dynamically binarized images (a fresh Bernoulli draw of every gray level each epoch), and
#: the VampPrior paper's split of MNIST's 60,000 training images: the first 50,000 train, the
#: last 10,000 validate (holdout "last", validation_fraction 1/6).
_MNIST_MODEL = {
    "binarize": "dynamic",
    "holdout": "last",
    "validation_fraction": 1 / 6,
    "likelihood": "bernoulli",
    "filters": (32, 64),
    "hidden_units": None,
    "batch_size": 128,
    "learning_rate": 1e-3,
}

#: mnist-best's learned prior, flow posterior and KL warm-up, which mnist-two-layer puts on z2:
#: the VampPrior with 500 pseudo-inputs, a 2-step IAF and a linear warm-up over 10 epochs.
_VAMPPRIOR_IAF_WARMUP = {
    "prior": "vamp",
    "prior_components": 500,
    "posterior": "iaf",
    "iaf_steps": 2,
    "kl_schedule": "linear",
    "kl_warmup": 10.0,
}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="mnist-vae",
            description="fast default of the MNIST likelihood benchmark: conv VAE, 32 latents, "
            "mixture prior, 25 epochs, float32",
            settings={
                **_MNIST_MODEL,
                "latent_dim": 32,
                "prior": "mixture",
                "epochs": 25,
            },
            notes="On MNIST's first 50,000 training images (the last 10,000 validate) 25 epochs "
            "trained in 564 s (2,218 images/s) on a 2-core AMD EPYC, well inside the 30-minute "
            "budget; its last model scores 87.26 nats (test IW-NLL, K = 1000, all 10,000 test "
            "images; bfloat16 decodes, 800 s). float32: mixed_bfloat16 trained it 1.51x faster but "
            "ended 0.80 nats worse after 2 epochs (benchmarks/results/precision.json). The rest: "
            "benchmarks/results/mnist_likelihood.json and the README's MNIST likelihood benchmark.",
        ),
        Preset(
            name="mnist-best",
            description="best one-layer MNIST model within ~90 min on 2 cores: VampPrior + IAF "
            "posterior, 64 latents, KL warm-up, 60 epochs, float32",
            settings={
                **_MNIST_MODEL,
                "latent_dim": 64,
                **_VAMPPRIOR_IAF_WARMUP,
                "epochs": 60,
            },
            notes="The VampPrior (500 pseudo-inputs) and an inverse autoregressive flow posterior "
            "(2 steps) on a larger latent space, with a 10-epoch linear KL warm-up that keeps "
            "latent units active. 60 epochs of MNIST's first 50,000 training images trained in "
            "3,682 s (61 min, 815 images/s) on a 2-core AMD EPYC (2,899 s on the 2-core Intel Xeon "
            "with AMX before it): inside the 90-minute budget (the VampPrior encodes its 500 "
            "pseudo-inputs every step). Its last model scores 82.91 nats (test IW-NLL, K = 1000, "
            "all 10,000 test images; bfloat16 decodes, 840 s). float32: mixed_bfloat16 trained it "
            "1.27x faster but ended 0.82 nats worse after 2 epochs. The rest: "
            "benchmarks/results/mnist_likelihood.json and the README's MNIST likelihood benchmark.",
        ),
        Preset(
            name="mnist-two-layer",
            description="two stochastic layers (40 + 40 latents): VampPrior on z2, IAF posterior "
            "on z2, KL warm-up, 80 epochs, float32",
            settings={
                **_MNIST_MODEL,
                "stochastic_layers": 2,
                "latent_dim": 40,
                "top_latent_dim": 40,
                **_VAMPPRIOR_IAF_WARMUP,
                "epochs": 80,
            },
            notes="mnist-best's VampPrior (500 pseudo-inputs) and IAF posterior (2 steps) on the "
            "top layer z2 of a two-stochastic-layer VAE (z1 and z2 of 40 latents each, hidden "
            "layers of 300 units), with the same 10-epoch linear KL warm-up. 80 epochs of MNIST's "
            "first 50,000 training images trained in 4,912 s (82 min, 814 images/s) on a 2-core "
            "AMD EPYC; its last model scores 83.57 nats (test IW-NLL, K = 1000, all 10,000 test "
            "images; bfloat16 decodes, 926 s): better than the published two-layer VAE (85.33), "
            "0.66 nats behind mnist-best, which trains in less time, so mnist-best stays one "
            "layer. float32: mixed_bfloat16 trained it 1.60x faster but ended 0.55 nats worse "
            "after 2 epochs (bfloat16 with 1.6x the epochs was not measured). The rest: "
            "benchmarks/results/mnist_likelihood.json and the README's MNIST likelihood benchmark.",
        ),
    )
}

#: The preset names `tfvae train --preset` accepts.
PRESET_NAMES = tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        ValueError: an unknown name (one line, listing the names).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Expected one of {list(PRESET_NAMES)} (see tfvae train --list-presets).")
    return PRESETS[name]


def apply_preset(name: str | None, values: dict) -> dict:
    """`values` (settings of a config file or of Python code) on top of a preset's settings.

    Args:
        name: a preset name, or None for the preset `values` names under "preset" (if any).
        values: dict. Settings by `TrainConfig` field name (dashes allowed); they override the
            preset's.

    Returns:
        A new dict of settings (underscored names) with "preset" set to the preset's name; a copy
        of `values` when no preset is named.

    Raises:
        ValueError: an unknown preset name.
    """
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    name = name if name is not None else values.get("preset")
    if name is None:
        return values
    return {**get_preset(name).settings, **values, "preset": name}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The `TrainConfig` of a preset, with `overrides` (e.g. `dataset=`, `run_dir=`) on top.

    Example:

    ```python
    from tfvae.presets import preset_config

    config = preset_config("mnist-vae", dataset="../shared/data/mnist-train", epochs=1)
    assert config.latent_dim == 32 and config.preset == "mnist-vae"
    ```

    Raises:
        ValueError: an unknown preset, or an override `TrainConfig` rejects.
    """
    return TrainConfig.from_dict(apply_preset(name, overrides), source=f"preset {name!r} and its overrides")


def format_presets() -> str:
    """What `tfvae train --list-presets` prints: each preset's name, description and settings."""
    lines = []
    for preset in PRESETS.values():
        lines.append(f"{preset.name}: {preset.description}")
        for key, value in preset.settings.items():
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            lines.append(f"    {key} = {shown}")
    lines.append("Settings: defaults < --preset < --config file < flags. A preset names no data: "
                 "give --dataset (and --test-dataset).")
    return "\n".join(lines)
