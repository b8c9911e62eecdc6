"""Presets (issue 15): each one trains, saves, loads and exports; the precedence of settings;
`tfvae train --list-presets`; an unknown preset is a one-line error naming the presets."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from test_cli_errors import _cli_without_tensorflow

import tfvae
from tfvae import cli
from tfvae.config import TrainConfig
from tfvae.presets import (
    PRESET_NAMES,
    PRESETS,
    apply_preset,
    format_presets,
    get_preset,
    preset_config,
)
from tfvae.training import load_run_config, load_run_model, train


def resolve(argv: list[str]) -> TrainConfig:
    """The `TrainConfig` that `tfvae train ARGV` would train."""
    args = cli.build_parser().parse_args(["train", *argv])
    args.command_line = ["train", *argv]
    return cli.resolve_train_config(args)


@pytest.fixture(scope="module")
def small_slice(tmp_path_factory, digits):
    """140 digit images as an .npz file: 117 training images (the presets hold out the last
    sixth), one step of a preset's batch of 128."""
    (images, _), _ = digits
    path = tmp_path_factory.mktemp("slice") / "digits-slice.npz"
    np.savez(path, x_train=np.round(images[:140, ..., 0] * 255).astype(np.uint8))
    return str(path)


def test_presets_are_documented_checked_configurations():
    assert set(PRESET_NAMES) >= {"mnist-vae", "mnist-best"}
    for name, preset in PRESETS.items():
        assert preset.name == name and "\n" not in preset.description and preset.notes
        # A preset names no data: the user gives --dataset and --test-dataset.
        assert not {"dataset", "test_dataset", "run_dir"} & set(preset.settings)
        config = preset_config(name)
        assert config.preset == name
        for key, value in preset.settings.items():
            assert getattr(config, key) == value, key
    assert preset_config("mnist-vae").binarize == "dynamic"
    for name in ("mnist-vae", "mnist-best"):  # MNIST's first 50,000 train, its last 10,000 validate
        config = preset_config(name)
        assert config.holdout == "last" and round(60_000 * config.validation_fraction) == 10_000
    best = preset_config("mnist-best")
    assert (best.prior, best.posterior, best.kl_schedule) == ("vamp", "iaf", "linear")
    assert best.latent_dim > preset_config("mnist-vae").latent_dim
    two_layer = preset_config("mnist-two-layer")  # the VampPrior and the flow sit on z2
    assert (two_layer.stochastic_layers, two_layer.prior, two_layer.posterior) == (2, "vamp", "iaf")
    assert two_layer.holdout == "last" and round(60_000 * two_layer.validation_fraction) == 10_000
    for name in PRESET_NAMES:  # their figures are the benchmark's to give
        assert "benchmarks/results/mnist_likelihood.json" in get_preset(name).notes


#: Presets whose one-step run takes more than ~20 s here (tracing the VampPrior + IAF step).
SLOW_PRESETS = {"mnist-best", "mnist-two-layer"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_PRESETS else []) for name in PRESET_NAMES
])
def test_every_preset_trains_saves_loads_and_exports(name, small_slice, tmp_path):
    config = preset_config(name, dataset=small_slice, epochs=1, run_dir=str(tmp_path / "run"))
    metrics = train(config, verbose=0)
    assert metrics["epochs_completed"] == 1 and not metrics["stopped_on_nan"]
    assert metrics["num_train_examples"] == 117  # one step of 128
    recorded = load_run_config(tmp_path / "run")
    assert recorded.preset == name
    assert dataclasses.replace(recorded, run_dir=config.run_dir) == config
    vae = load_run_model(tmp_path / "run")
    if config.stochastic_layers == 2:  # z = [z1, z2]: D1 = latent_dim, D2 = top_latent_dim
        assert vae.latent_dims == (config.latent_dim, config.top_latent_dim or config.latent_dim)
    else:
        assert vae.latent_dim == config.latent_dim
    assert type(vae.prior).__name__ == type(tfvae.distributions.get_prior(config.prior)).__name__
    assert type(vae.posterior).__name__ == type(tfvae.distributions.get_posterior(config.posterior)).__name__
    images = tf.convert_to_tensor(np.load(small_slice)["x_train"][:4, ..., None] / 255.0, tf.float32)
    path = tfvae.export_saved_model(vae, tmp_path / "export")
    exported = tf.saved_model.load(str(path))
    np.testing.assert_allclose(exported.reconstruct(images)["images"], vae.reconstruct(images), atol=1e-5)
    assert exported.sample(tf.constant(3), tf.constant(0, tf.int64))["images"].shape == (3, 8, 8, 1)


def test_settings_precedence_defaults_preset_config_file_flags(tmp_path):
    defaults = TrainConfig()
    preset = get_preset("mnist-vae").settings
    config = resolve(["--preset", "mnist-vae"])
    assert (config.latent_dim, config.epochs, config.prior, config.preset) == (
        preset["latent_dim"], preset["epochs"], "mixture", "mnist-vae")
    assert config.seed == defaults.seed and config.dataset == defaults.dataset  # not in the preset

    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps({"latent-dim": 5, "epochs": 3}))
    config = resolve(["--preset", "mnist-vae", "--config", str(config_file), "--epochs", "2"])
    assert (config.latent_dim, config.epochs) == (5, 2)  # the file over the preset, the flag over the file
    assert (config.prior, config.batch_size, config.preset) == ("mixture", preset["batch_size"], "mnist-vae")

    # A config file may name the preset; --preset wins over it.
    config_file.write_text(json.dumps({"preset": "mnist-best", "epochs": 3}))
    config = resolve(["--config", str(config_file)])
    assert (config.preset, config.prior, config.epochs) == ("mnist-best", "vamp", 3)
    config = resolve(["--config", str(config_file), "--preset", "mnist-vae"])
    assert (config.preset, config.prior, config.epochs) == ("mnist-vae", "mixture", 3)

    assert resolve([]).preset is None and resolve([]) == defaults
    assert apply_preset(None, {"latent-dim": 4}) == {"latent_dim": 4}


def test_list_presets_prints_names_descriptions_and_settings():
    result, _ = _cli_without_tensorflow("train", "--list-presets")
    assert result.returncode == 0 and result.stderr == ""
    out = result.stdout
    assert out.endswith("imported: nothing\n")  # answers at once, as --help does
    assert out.removesuffix("imported: nothing\n").strip() == format_presets()
    for name, preset in PRESETS.items():
        assert f"{name}: {preset.description}" in out
    assert "    latent_dim = 32\n" in out and "    filters = 32,64\n" in out and "    prior = vamp\n" in out


@pytest.mark.parametrize("where", ["flag", "config file"])
def test_unknown_preset_is_a_one_line_error_listing_the_presets(where, tmp_path, capsys):
    if where == "flag":
        argv = ["train", "--preset", "mnist-fast"]
    else:
        (tmp_path / "settings.yaml").write_text("preset: mnist-fast\n")
        argv = ["train", "--config", str(tmp_path / "settings.yaml")]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tfvae: error: Unknown preset 'mnist-fast'. Expected one of ['mnist-vae', 'mnist-best'")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"Unknown preset 'mnist-fast'\. Expected one of \["):
        TrainConfig(preset="mnist-fast")


def test_preset_with_resume_is_refused(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path), "--preset", "mnist-vae"]) == cli.EXIT_USER_ERROR
    assert "Expected either --resume or --preset" in capsys.readouterr().err
