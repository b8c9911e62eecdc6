"""Tests of tfvae.export: endpoints against the Keras model, TF-only loading, safe writes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_environment, run_main

import tfvae
from tfvae import export
from tfvae.training import TrainConfig, train

ENDPOINT_NAMES = (
    "encode", "embed", "decode", "sample", "reconstruct", "elbo", "posterior_sample", "prior_log_prob",
    "log_likelihood",
)


def _color_digits(images, seed=0):
    """32x32x3 images from the 8x8 digits: upsampled 4x and tinted with a random color each."""
    upsampled = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    colors = np.random.default_rng(seed).uniform(0.2, 1.0, size=(len(images), 1, 1, 3))
    return (upsampled * colors).astype("float32")


@pytest.fixture(scope="module", params=["bernoulli-8x8x1", "gaussian-32x32x3"])
def exported(request, digits, tmp_path_factory):
    """`(vae, export_path, images)` for a briefly trained model of each likelihood."""
    (train_images, _), (validation_images, _) = digits
    keras.utils.set_random_seed(0)
    if request.param == "bernoulli-8x8x1":
        images, test_images = train_images, validation_images[:16]
        vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=4, filters=(8, 16), seed=0)
    else:
        images = _color_digits(train_images[:256])
        test_images = _color_digits(validation_images[:16])
        vae = tfvae.build_conv_vae(
            (32, 32, 3), latent_dim=6, filters=(8, 16), likelihood="gaussian", seed=0
        )
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(images, epochs=1, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp(request.param) / "export"
    tfvae.export_saved_model(vae, path)
    return vae, path, test_images


@pytest.fixture(scope="module")
def small_vae():
    keras.utils.set_random_seed(1)
    return tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=1)


def _keras_elbo_with_noise(vae, images, noise):
    """The Keras model's own `compute_elbo_terms`, with its posterior noise replaced by `noise`."""
    original = vae.draw_noise
    vae.draw_noise = lambda shape: noise
    try:
        return vae.compute_elbo_terms(images)
    finally:
        vae.draw_noise = original


def _close(actual, expected):
    # ELBO terms are sums over up to 3,072 pixels: 1e-5 relative, and 1e-5 absolute near zero.
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_exported_endpoints_equal_the_keras_model(exported):
    vae, path, images = exported
    loaded = tf.saved_model.load(str(path))

    posterior = vae.encode(images)
    encoded = loaded.encode(images)
    _close(encoded["loc"], posterior.mean())
    _close(encoded["scale"], posterior.stddev())
    _close(loaded.embed(images)["embedding"], posterior.mean())

    z = np.random.default_rng(3).normal(size=(5, vae.latent_dim)).astype("float32")
    decoded = loaded.decode(z)
    parameters = vae.decoder(z)
    _close(decoded["parameters"], parameters)
    _close(decoded["images"], vae.likelihood.mean(parameters))
    assert decoded["images"].shape == (5, *vae.image_shape)

    _close(loaded.reconstruct(images)["images"], vae.reconstruct(images))
    _close(loaded.signatures["serving_default"](images=images)["images"], vae(images))

    seed = 123456789012  # wider than 32 bits: both halves enter the stateless seed
    noise = tf.random.stateless_normal(
        [len(images), vae.latent_dim], seed=tf.bitcast(tf.constant(seed, tf.int64), tf.int32)
    )
    expected = _keras_elbo_with_noise(vae, images, noise)
    scored = loaded.elbo(images, seed)
    for name in ("elbo", "reconstruction", "kl"):
        assert scored[name].shape == (len(images),)
        _close(scored[name], expected[name])
    # Deterministic for a seed; another seed draws other noise.
    np.testing.assert_array_equal(loaded.elbo(images, seed)["elbo"], scored["elbo"])
    assert not np.allclose(loaded.elbo(images, seed + 1)["elbo"], scored["elbo"])


def test_sample_is_reproducible_for_a_seed_and_decodes_prior_draws(exported):
    vae, path, _ = exported
    loaded = tf.saved_model.load(str(path))

    first = loaded.sample(num_samples=7, seed=42)["images"].numpy()
    assert first.shape == (7, *vae.image_shape)
    np.testing.assert_array_equal(loaded.sample(num_samples=7, seed=42)["images"], first)
    assert np.abs(loaded.sample(num_samples=7, seed=43)["images"].numpy() - first).max() > 1e-3

    # The same z the endpoint draws, decoded by the Keras model.
    z = vae.prior_distribution().sample(7, seed=export.stateless_seed(42))
    _close(first, vae.likelihood.mean(vae.decoder(z)))

    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples >= 1"):
        loaded.sample(num_samples=0, seed=1)


def test_signatures_have_named_inputs_outputs_and_any_batch_size(exported):
    vae, path, images = exported
    loaded = tf.saved_model.load(str(path))

    assert set(loaded.signatures) == {*ENDPOINT_NAMES, "serving_default"}
    serving = loaded.signatures["serving_default"]
    inputs = serving.structured_input_signature[1]
    assert list(inputs) == ["images"]
    assert inputs["images"].shape.as_list() == [None, *vae.image_shape]
    assert list(serving.structured_outputs) == ["images"]
    expected_outputs = {
        name: set(spec["outputs"]) for name, spec in export.ENDPOINTS.items()
    }
    for name in ENDPOINT_NAMES:
        signature = loaded.signatures[name]
        assert set(signature.structured_outputs) == expected_outputs[name]
        assert set(signature.structured_input_signature[1]) == set(export.ENDPOINTS[name]["inputs"])
        for spec in signature.structured_input_signature[1].values():
            assert spec.shape.rank == 0 or spec.shape[0] is None
    # Batch 1 and an odd batch go through the same export.
    assert loaded.embed(images[:1])["embedding"].shape == (1, vae.latent_dim)
    assert loaded.embed(images[:11])["embedding"].shape == (11, vae.latent_dim)


def test_metadata_asset_describes_the_model(exported):
    vae, path, _ = exported
    assert (path / "assets.extra" / "tfvae.json").is_file()
    metadata = export.read_metadata(path)
    assert metadata["latent_dim"] == vae.latent_dim
    assert metadata["image_shape"] == list(vae.image_shape)
    assert metadata["image_dtype"] == "float32"
    assert metadata["tfvae_version"] == tfvae.__version__
    assert metadata["expects_binarized_images"] is False
    assert metadata["prior"] == "standard_normal"
    assert metadata["prior_settings"] == {}
    likelihood = "bernoulli" if vae.image_shape == (8, 8, 1) else "gaussian"
    assert metadata["likelihood"] == likelihood
    assert metadata["value_range"] == ([0.0, 1.0] if likelihood == "bernoulli" else None)
    assert metadata["likelihood_parameters"] == ("logits" if likelihood == "bernoulli" else "mean")


_TF_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow_probability"] = None  # any import of them now fails
    sys.modules["tfvae"] = None
    import json
    import keras
    import numpy as np
    import tensorflow as tf

    path, images_file = sys.argv[1:]
    images = np.load(images_file)
    model = tf.saved_model.load(path)
    seed = tf.constant(9, tf.int64)
    direct = {
        "encode_loc": model.encode(images)["loc"],
        "encode_scale": model.encode(images)["scale"],
        "embed": model.embed(images)["embedding"],
        "decode": model.decode(model.embed(images)["embedding"])["images"],
        "decode_parameters": model.decode(model.embed(images)["embedding"])["parameters"],
        "reconstruct": model.reconstruct(images)["images"],
        "serving_default": model.signatures["serving_default"](images=images)["images"],
        "sample": model.sample(num_samples=3, seed=5)["images"],
        "elbo": model.elbo(images, seed)["elbo"],
    }
    # Every endpoint inside tf.data.Dataset.map: one batch holding all the images (so that the
    # elbo's noise, drawn per batch, is the same), and one sample per seed.
    batch = tf.data.Dataset.from_tensors(images)
    in_dataset = {
        "encode_loc": batch.map(lambda x: model.encode(x)["loc"]),
        "encode_scale": batch.map(lambda x: model.encode(x)["scale"]),
        "embed": batch.map(lambda x: model.embed(x)["embedding"]),
        "decode": batch.map(lambda x: model.decode(model.embed(x)["embedding"])["images"]),
        "decode_parameters": batch.map(
            lambda x: model.decode(model.embed(x)["embedding"])["parameters"]
        ),
        "reconstruct": batch.map(lambda x: model.reconstruct(x)["images"]),
        "serving_default": batch.map(
            lambda x: model.signatures["serving_default"](images=x)["images"]
        ),
        "sample": tf.data.Dataset.from_tensors(tf.constant(5, tf.int64)).map(
            lambda s: model.sample(tf.constant(3), s)["images"]
        ),
        "elbo": batch.map(lambda x: model.elbo(x, seed)["elbo"]),
    }
    results = {name: value.numpy().tolist() for name, value in direct.items()}
    results["dataset"] = {
        name: next(iter(dataset)).numpy().tolist() for name, dataset in in_dataset.items()
    }
    results["dataset_embed_batches_of_4"] = np.concatenate(list(
        tf.data.Dataset.from_tensor_slices(images).batch(4).map(
            lambda x: model.embed(x)["embedding"], num_parallel_calls=2
        ).as_numpy_iterator()
    )).tolist()
    # As layers of a functional Keras model.
    inputs = keras.Input(images.shape[1:])
    embedding = keras.layers.TFSMLayer(path, call_endpoint="embed", trainable=False)(inputs)
    reconstruction = keras.layers.TFSMLayer(path, call_endpoint="serving_default")(inputs)
    doubled = keras.layers.Lambda(lambda e: 2.0 * e)(embedding["embedding"])
    functional = keras.Model(inputs, [doubled, reconstruction["images"]])
    doubled_embedding, reconstructed = functional.predict(images, verbose=0)
    results["tfsm_layer_embed"] = doubled_embedding.tolist()
    results["tfsm_layer_reconstruct"] = reconstructed.tolist()
    results["blocked"] = [name for name in ("tensorflow_probability", "tfvae")
                          if sys.modules[name] is None]
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.mark.slow
def test_export_loads_with_tensorflow_only(exported, tmp_path):
    vae, path, images = exported
    images_file = tmp_path / "images.npy"
    np.save(images_file, images)
    completed = subprocess.run(
        [sys.executable, "-c", _TF_ONLY_SCRIPT, str(path), str(images_file)],
        env=cli_environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))
    out = json.loads(line[len("RESULTS"):])
    assert out["blocked"] == ["tensorflow_probability", "tfvae"]

    posterior = vae.encode(images)
    z = vae.prior_distribution().sample(3, seed=export.stateless_seed(5))
    noise = tf.random.stateless_normal([len(images), vae.latent_dim], seed=export.stateless_seed(9))
    expected = {
        "encode_loc": posterior.mean(),
        "encode_scale": posterior.stddev(),
        "embed": posterior.mean(),
        "decode": vae.likelihood.mean(vae.decoder(posterior.mean())),
        "decode_parameters": vae.decoder(posterior.mean()),
        "reconstruct": vae.reconstruct(images),
        "serving_default": vae(images),
        "sample": vae.likelihood.mean(vae.decoder(z)),
        "elbo": _keras_elbo_with_noise(vae, images, noise)["elbo"],
    }
    assert set(out["dataset"]) == set(expected)
    for name, value in expected.items():
        _close(out[name], value)
        _close(out["dataset"][name], value)
    _close(out["dataset_embed_batches_of_4"], posterior.mean())
    _close(out["tfsm_layer_embed"], 2.0 * posterior.mean())
    _close(out["tfsm_layer_reconstruct"], vae(images))


def _tree(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_existing_target_is_refused_unless_overwrite(small_vae, tmp_path, monkeypatch):
    target = tmp_path / "export"
    monkeypatch.chdir(tmp_path)
    assert tfvae.export_saved_model(small_vae, "export/") == pathlib.Path("export")
    before = {p: (target / p).read_bytes() for p in _tree(target) if (target / p).is_file()}

    with pytest.raises(FileExistsError, match="already exists"):
        tfvae.export_saved_model(small_vae, target)
    after = {p: (target / p).read_bytes() for p in _tree(target) if (target / p).is_file()}
    assert after == before

    # overwrite=True replaces an export with the new model's.
    keras.utils.set_random_seed(7)
    other = tfvae.build_conv_vae((8, 8, 1), latent_dim=3, filters=(4,), seed=7)
    tfvae.export_saved_model(other, target, overwrite=True)
    assert export.read_metadata(target)["latent_dim"] == 3
    images = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    # Keep a reference to the loaded object: its functions need its variables alive.
    reloaded = tf.saved_model.load(str(target))
    _close(reloaded.reconstruct(images)["images"], other(images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_overwrite_refuses_what_is_not_an_export(small_vae, tmp_path):
    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "holiday.png").write_bytes(b"not a model")
    with pytest.raises(FileExistsError, match="not"):
        tfvae.export_saved_model(small_vae, user_dir, overwrite=True)
    assert (user_dir / "holiday.png").read_bytes() == b"not a model"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError):
        tfvae.export_saved_model(small_vae, a_file, overwrite=True)
    assert a_file.read_text() == "keep me"
    with pytest.raises(ValueError, match="Expected a tfvae.VAE"):
        tfvae.export_saved_model(small_vae.encoder, tmp_path / "encoder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


class _SimulatedFailure(RuntimeError):
    pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_midway_leaves_no_half_written_export(small_vae, tmp_path, monkeypatch, overwrite):
    target = tmp_path / "export"
    if overwrite:
        keras.utils.set_random_seed(5)
        old = tfvae.build_conv_vae((8, 8, 1), latent_dim=5, filters=(4,), seed=5)
        tfvae.export_saved_model(old, target)
        old_tree = _tree(target)
    staged = []

    def fail_after_the_savedmodel_is_written(directory, metadata):
        staged.append(_tree(directory))
        raise _SimulatedFailure("disk full")

    monkeypatch.setattr(export, "_write_metadata", fail_after_the_savedmodel_is_written)
    with pytest.raises(_SimulatedFailure):
        tfvae.export_saved_model(small_vae, target, overwrite=overwrite)
    assert "saved_model.pb" in staged[0]  # the failure did come midway
    if overwrite:
        assert _tree(target) == old_tree
        assert export.read_metadata(target)["latent_dim"] == 5
        reloaded = tf.saved_model.load(str(target))
        assert reloaded.embed(np.zeros((1, 8, 8, 1), "float32"))["embedding"].shape == (1, 5)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    else:
        assert list(tmp_path.iterdir()) == []


def test_failed_final_rename_restores_the_previous_export(small_vae, tmp_path, monkeypatch):
    target = tmp_path / "export"
    keras.utils.set_random_seed(5)
    old = tfvae.build_conv_vae((8, 8, 1), latent_dim=5, filters=(4,), seed=5)
    tfvae.export_saved_model(old, target)
    old_tree = _tree(target)

    def fail(source, destination):
        assert not destination.exists()  # the old export has been moved aside
        raise _SimulatedFailure("rename failed")

    monkeypatch.setattr(export, "_move_into_place", fail)
    with pytest.raises(_SimulatedFailure):
        tfvae.export_saved_model(small_vae, target, overwrite=True)
    assert _tree(target) == old_tree
    assert export.read_metadata(target)["latent_dim"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_read_metadata_of_a_non_export_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfvae.json"):
        export.read_metadata(tmp_path)


def _error_lines(stderr):
    # TensorFlow's C++ runtime may log to stderr at import; the CLI's own lines start "tfvae:".
    return [line for line in stderr.splitlines() if line.startswith("tfvae:")]


@pytest.mark.slow
def test_cli_exports_a_run_directory(tmp_path, capsys):
    # `tfvae export` runs in this process (run_main): a subprocess of its own would only add
    # TensorFlow's start-up to each of the four commands.
    run_dir = tmp_path / "run"
    train(TrainConfig(epochs=1, latent_dim=3, filters=(8,), run_dir=str(run_dir)), verbose=0)
    target = tmp_path / "export"

    status, out, err = run_main(capsys, "export", run_dir, target)
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["export"] == str(target)
    metadata = export.read_metadata(target)
    assert metadata["dataset"] == "digits"
    assert metadata["latent_dim"] == 3
    vae = keras.models.load_model(run_dir / "model.keras")
    images = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    reloaded = tf.saved_model.load(str(target))
    _close(reloaded.reconstruct(images)["images"], vae(images))

    status, _, err = run_main(capsys, "export", run_dir, target)
    assert status == 2
    [message] = _error_lines(err)
    assert "already exists" in message and "--overwrite" in message

    assert run_main(capsys, "export", run_dir, target, "--overwrite")[0] == 0
    assert export.read_metadata(target)["latent_dim"] == 3

    status, _, err = run_main(capsys, "export", tmp_path / "nowhere", tmp_path / "other")
    assert status == 2
    [message] = _error_lines(err)
    assert "model.keras" in message and "nowhere" in message
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- what a killed export leaves
def _make_leftover(target, token, role, lock_holder=None):
    """A hand-made `.NAME.<token>.ROLE` folder beside `target`, as an export leaves it."""
    folder = target.parent / f".{target.name}.{token}.{role}"
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "saved_model.pb").write_bytes(b"half")
    if lock_holder is not None:
        (folder / "export.lock").write_text("12345\n")
    return folder


def test_next_export_removes_what_killed_exports_left(small_vae, tmp_path):
    import fcntl

    target = tmp_path / "export"
    dead = _make_leftover(target, "0000dead", "tmp", lock_holder="nobody")  # its process is gone
    live = _make_leftover(target, "0000live", "tmp", lock_holder="this test")
    unlocked_recent = _make_leftover(target, "00000new", "tmp")  # just created, not locked yet
    other = tmp_path / ".exports.0000dead.tmp"  # another target's: not ours to touch
    other.mkdir()
    with (live / "export.lock").open("r") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a concurrent export holds it
        tfvae.export_saved_model(small_vae, target)
    assert export.read_metadata(target)["latent_dim"] == small_vae.latent_dim
    assert not dead.exists()
    assert live.exists() and unlocked_recent.exists() and other.exists()


def test_a_moved_aside_export_is_restored_never_deleted(small_vae, tmp_path, capsys):
    target = tmp_path / "export"
    keras.utils.set_random_seed(5)
    tfvae.export_saved_model(tfvae.build_conv_vae((8, 8, 1), latent_dim=5, filters=(4,), seed=5), target)
    # Killed between its two renames: the previous export moved aside, the new one not in place.
    previous = tmp_path / ".export.0000dead.old"
    target.rename(previous)
    _make_leftover(target, "0000dead", "tmp", lock_holder="nobody")
    with pytest.raises(FileExistsError, match="already exists"):
        tfvae.export_saved_model(small_vae, target)  # restored first, so it exists again
    assert "restored the previous export" in capsys.readouterr().err
    assert export.read_metadata(target)["latent_dim"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    # With the target in place, an .old folder is left alone (it may be all the user has left).
    keep = tmp_path / ".export.0000beef.old"
    keep.mkdir()
    tfvae.export_saved_model(small_vae, target, overwrite=True)
    assert keep.exists() and export.read_metadata(target)["latent_dim"] == small_vae.latent_dim


@pytest.mark.slow
def test_a_killed_export_is_cleaned_up_by_the_next(small_vae, tmp_path):
    target = tmp_path / "export"
    script = textwrap.dedent(f"""
        import sys, time
        import tfvae
        from tfvae import export

        def hang(directory, metadata):
            print("writing", flush=True)
            time.sleep(600)

        export._write_metadata = hang
        tfvae.export_saved_model(tfvae.build_conv_vae((8, 8, 1), 2, filters=(4,)), {str(target)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=cli_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        (workspace,) = tmp_path.glob(".export.*.tmp")
        # While it runs, another export to the same target leaves its workspace alone.
        tfvae.export_saved_model(small_vae, target)
        assert workspace.exists()
    finally:
        process.kill()
        process.wait()
    tfvae.export_saved_model(small_vae, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        tfvae.objectives.ELBO(0.5, tfvae.objectives.LinearWarmup(4), free_bits=0.2),
        tfvae.objectives.IWAE(4, gradient_estimator="dreg"),
    ],
    ids=["elbo-warmup-free-bits", "iwae-dreg"],
)
def test_export_works_for_every_objective(objective, digits, tmp_path):
    # The objective shapes training only: the exported generative API is the same.
    (train_images, _), (validation_images, _) = digits
    vae = tfvae.build_conv_vae((8, 8, 1), latent_dim=2, filters=(4,), seed=3, objective=objective)
    vae.compile()
    vae.fit(train_images[:64], epochs=1, batch_size=32, verbose=0)
    path = tfvae.export_saved_model(vae, tmp_path / "export")
    loaded = tf.saved_model.load(str(path))
    images = validation_images[:8]
    _close(loaded.embed(images)["embedding"], vae.encode(images).mean())
    _close(loaded.reconstruct(images)["images"], vae.reconstruct(images))
    noise = tf.random.stateless_normal([8, 2], seed=export.stateless_seed(11))
    _close(loaded.elbo(images, 11)["elbo"], _keras_elbo_with_noise(vae, images, noise)["elbo"])
    assert loaded.sample(3, 0)["images"].shape == (3, 8, 8, 1)
