"""SavedModel export of a `tfvae.VAE` that plain TensorFlow loads (no tfvae, no TFP needed).

The export is written into a temporary directory beside the target and renamed into place, so a
reader only ever sees a complete SavedModel (or the previous one, when overwriting). What a killed
export leaves behind is cleaned up by the next export to the same target.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

try:
    import fcntl
except ImportError:  # Windows: without flock, leftovers are never removed
    fcntl = None

from tfvae.distributions import likelihood_name, posterior_name, prior_name
from tfvae.models.conditional import ConditionalVAE
from tfvae.models.vae import VAE
from tfvae.objectives import elbo_terms
from tfvae.version import __version__

#: Where the metadata JSON lives inside the SavedModel directory. `assets.extra/` is the
#: SavedModel convention for files that travel with the model but are not loaded by TensorFlow.
METADATA_PATH = Path("assets.extra") / "tfvae.json"

#: Bumped when the endpoints or the metadata change incompatibly.
EXPORT_FORMAT_VERSION = 1

#: The endpoints of the export, their inputs and their outputs (also written to the metadata).
ENDPOINTS = {
    "encode": {"inputs": ["images"], "outputs": ["loc", "scale"]},
    "embed": {"inputs": ["images"], "outputs": ["embedding"]},
    "decode": {"inputs": ["z"], "outputs": ["images", "parameters"]},
    "sample": {"inputs": ["num_samples", "seed"], "outputs": ["images"]},
    "reconstruct": {"inputs": ["images"], "outputs": ["images"]},
    "elbo": {"inputs": ["images", "seed"], "outputs": ["elbo", "reconstruction", "kl"]},
    "posterior_sample": {"inputs": ["images", "num_samples", "seed"], "outputs": ["z", "log_q"]},
    "prior_log_prob": {"inputs": ["z"], "outputs": ["log_prob"]},
    "log_likelihood": {"inputs": ["images", "z"], "outputs": ["log_likelihood"]},
}

#: The endpoints of a `tfvae.ConditionalVAE`: the same, each also taking the class `labels`
#: (int32 ids `[B]`; for `sample`, one per sample).
CONDITIONAL_ENDPOINTS = {
    "encode": {"inputs": ["images", "labels"], "outputs": ["loc", "scale"]},
    "embed": {"inputs": ["images", "labels"], "outputs": ["embedding"]},
    "decode": {"inputs": ["z", "labels"], "outputs": ["images", "parameters"]},
    "sample": {"inputs": ["num_samples", "seed", "labels"], "outputs": ["images"]},
    "reconstruct": {"inputs": ["images", "labels"], "outputs": ["images"]},
    "elbo": {"inputs": ["images", "labels", "seed"], "outputs": ["elbo", "reconstruction", "kl"]},
    "posterior_sample": {
        "inputs": ["images", "labels", "num_samples", "seed"], "outputs": ["z", "log_q"],
    },
    "prior_log_prob": {"inputs": ["z", "labels"], "outputs": ["log_prob"]},
    "log_likelihood": {"inputs": ["images", "z", "labels"], "outputs": ["log_likelihood"]},
}


def stateless_seed(seed):
    """The `int32[2]` stateless seed the exported `sample` and `elbo` derive from an int64 seed.

    The two 32-bit halves of the 64-bit seed, so distinct seeds give distinct random streams.

    Args:
        seed: int or scalar int64 tensor.

    Returns:
        An `int32` tensor of shape `[2]`, for `tf.random.stateless_*` ops and TFP's `seed=`.
    """
    return tf.bitcast(tf.cast(seed, tf.int64), tf.int32)


def _float32(tensor):
    # Under a mixed-precision policy the networks compute in float16; consumers get float32.
    return tf.cast(tensor, tf.float32)


class _Endpoints:
    """The functions of one VAE that become the SavedModel's endpoints (traced, TF ops only)."""

    def __init__(self, vae):
        self.vae = vae

    def _posterior(self, images):
        return self.vae.encode(images, training=False)

    def _posterior_sample(self, images, num_samples, seed):
        return self.vae.posterior_sample(images, num_samples, seed=stateless_seed(seed))

    def encode(self, images):
        posterior = self._posterior(images)
        return {"loc": posterior.mean(), "scale": posterior.stddev()}

    def embed(self, images):
        return {"embedding": self._posterior(images).mean()}

    def decode(self, z):
        return self._decoded(z)

    def _decoded(self, z):
        parameters = self.vae.decoder_parameters(z, training=False)
        return {
            "images": _float32(self.vae.likelihood.mean(parameters)),
            "parameters": _float32(parameters),
        }

    def sample(self, num_samples, seed):
        check = tf.debugging.assert_positive(
            num_samples, message="Expected num_samples >= 1 in sample(num_samples, seed)."
        )
        with tf.control_dependencies([check]):
            z = self.vae._draw_prior(num_samples, stateless_seed(seed))
        return {"images": self._decoded(z)["images"]}

    def reconstruct(self, images):
        return {"images": _float32(self.vae(images, training=False))}

    def elbo(self, images, seed):
        noise = tf.random.stateless_normal(
            tf.stack([1, tf.shape(images)[0], self.vae.latent_dim]), seed=stateless_seed(seed)
        )
        z, log_q, posterior = self.vae.sample_latents(images, noise, training=False)
        terms = elbo_terms(
            images, self.vae.decode(z[0]), posterior, self.vae.prior_distribution(), z[0],
            log_q=log_q[0],
        )
        return {name: terms[name] for name in ENDPOINTS["elbo"]["outputs"]}

    def posterior_sample(self, images, num_samples, seed):
        check = tf.debugging.assert_positive(
            num_samples, message="Expected num_samples >= 1 in posterior_sample(images, num_samples, seed)."
        )
        with tf.control_dependencies([check]):
            z, log_q = self._posterior_sample(images, num_samples, seed)
        return {"z": z, "log_q": log_q}

    def prior_log_prob(self, z):
        return {"log_prob": self.vae.prior_distribution().log_prob(tf.cast(z, tf.float32))}

    def log_likelihood(self, images, z):
        shape = tf.shape(z)
        flat_z = tf.reshape(z, [-1, self.vae.latent_dim])
        tiled = tf.broadcast_to(images[tf.newaxis], tf.concat([shape[:1], tf.shape(images)], 0))
        flat_images = tf.reshape(tiled, tf.concat([[-1], tf.shape(images)[1:]], 0))
        log_likelihood = self.vae.decode(flat_z).log_prob(flat_images)
        return {"log_likelihood": tf.reshape(log_likelihood, shape[:2])}


class _ConditionalEndpoints(_Endpoints):
    """The endpoints of a `tfvae.ConditionalVAE`: `_Endpoints`' functions given class labels."""

    def _given(self, labels):
        num_classes = self.vae.num_classes
        checks = [
            tf.debugging.assert_non_negative(labels, message="Expected labels >= 0."),
            tf.debugging.assert_less(
                labels, num_classes, message=f"Expected labels < num_classes = {num_classes}."
            ),
        ]
        with tf.control_dependencies(checks):
            return self.vae.conditioned_on(tf.one_hot(labels, num_classes, dtype=tf.float32))

    def encode(self, images, labels):
        with self._given(labels):
            return super().encode(images)

    def embed(self, images, labels):
        with self._given(labels):
            return super().embed(images)

    def decode(self, z, labels):
        with self._given(labels):
            return super().decode(z)

    def sample(self, num_samples, seed, labels):
        check = tf.debugging.assert_equal(
            tf.size(labels), num_samples,
            message="Expected one label per sample in sample(num_samples, seed, labels).",
        )
        with tf.control_dependencies([check]), self._given(labels):
            return super().sample(num_samples, seed)

    def reconstruct(self, images, labels):
        with self._given(labels):
            return super().reconstruct(images)

    def elbo(self, images, labels, seed):
        with self._given(labels):
            return super().elbo(images, seed)

    def posterior_sample(self, images, labels, num_samples, seed):
        with self._given(labels):
            return super().posterior_sample(images, num_samples, seed)

    def prior_log_prob(self, z, labels):
        with self._given(labels):
            return super().prior_log_prob(z)

    def log_likelihood(self, images, z, labels):
        with self._given(labels):
            return super().log_likelihood(images, z)


def _conditional_input_signatures(vae) -> dict:
    """`_input_signatures` with the labels, int32 `[B]`, where `CONDITIONAL_ENDPOINTS` put them."""
    labels = tf.TensorSpec((None,), tf.int32, name="labels")
    signatures = {}
    for name, specs in _input_signatures(vae).items():
        by_name = {spec.name: spec for spec in specs}
        by_name["labels"] = labels
        signatures[name] = [by_name[argument] for argument in CONDITIONAL_ENDPOINTS[name]["inputs"]]
    return signatures


def _input_signatures(vae) -> dict:
    images = tf.TensorSpec((None, *vae.image_shape), tf.float32, name="images")
    seed = tf.TensorSpec((), tf.int64, name="seed")
    samples = tf.TensorSpec((None, None, vae.latent_dim), tf.float32, name="z")
    return {
        "encode": [images],
        "embed": [images],
        "decode": [tf.TensorSpec((None, vae.latent_dim), tf.float32, name="z")],
        "sample": [tf.TensorSpec((), tf.int32, name="num_samples"), seed],
        "reconstruct": [images],
        "elbo": [images, seed],
        "posterior_sample": [images, tf.TensorSpec((), tf.int32, name="num_samples"), seed],
        "prior_log_prob": [samples],
        "log_likelihood": [images, samples],
    }


def export_metadata(vae, extra: dict | None = None) -> dict:
    """What a consumer of the export needs to know, as written to `assets.extra/tfvae.json`.

    Args:
        vae: the `tfvae.VAE` being exported.
        extra: optional JSON-serializable entries added to (or overriding) the defaults, e.g.
            `{"dataset": "digits"}` or a `value_range` for Gaussian-likelihood data.

    Returns:
        A JSON-serializable dict.
    """
    likelihood = vae.likelihood
    value_range = likelihood.value_range
    metadata = {
        "format": "tfvae.saved_model",
        "format_version": EXPORT_FORMAT_VERSION,
        "tfvae_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "latent_dim": int(vae.latent_dim),
        "latent_dims": [int(d) for d in vae.latent_dims],
        "image_shape": [int(d) for d in vae.image_shape],
        "image_dtype": "float32",
        # The Bernoulli likelihood scores gray levels in [0, 1] as pixel probabilities, so
        # images need scaling to [0, 1] but no binarization; the 8-bit likelihoods take k / 255.
        # The Gaussians accept any real values: the range is the training data's, which the
        # model does not record.
        "value_range": list(value_range) if value_range is not None else None,
        "expects_binarized_images": False,
        "likelihood": likelihood_name(likelihood) or type(likelihood).__name__,
        "likelihood_settings": likelihood.settings(),
        "likelihood_parameters": likelihood.parameters_layout,
        "parameters_per_subpixel": int(likelihood.parameters_per_subpixel),
        "prior": prior_name(vae.prior) or type(vae.prior).__name__,
        "prior_settings": vae.prior.settings(),
        "posterior": posterior_name(vae.posterior) or type(vae.posterior).__name__,
        "posterior_settings": vae.posterior.settings(),
        "serving_default": "reconstruct",
        "conditional": isinstance(vae, ConditionalVAE),
        "num_classes": int(vae.num_classes) if isinstance(vae, ConditionalVAE) else None,
        "label_format": "int32 class ids [B] in [0, num_classes)" if isinstance(vae, ConditionalVAE) else None,
        "endpoints": CONDITIONAL_ENDPOINTS if isinstance(vae, ConditionalVAE) else ENDPOINTS,
        "elbo_noise": "tf.random.stateless_normal([1, batch, latent_dim], "
        "seed=tf.bitcast(tf.cast(seed, tf.int64), tf.int32))",
        "posterior_sample_noise": "tf.random.stateless_normal([num_samples, batch, latent_dim], "
        "seed=tf.bitcast(tf.cast(seed, tf.int64), tf.int32))",
    }
    metadata.update(extra or {})
    return metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """Reads the metadata of an export written by `export_saved_model`.

    Args:
        path: the SavedModel directory.

    Returns:
        The dict of `export_metadata`.

    Raises:
        FileNotFoundError: `path` holds no tfvae metadata (not a tfvae export).
    """
    metadata_file = Path(path) / METADATA_PATH
    if not metadata_file.is_file():
        raise FileNotFoundError(
            f"Expected a SavedModel written by tfvae.export_saved_model, with {METADATA_PATH}. "
            f"Received: '{path}', which has no such file."
        )
    return json.loads(metadata_file.read_text())


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(
            f"Expected a new export path. Received: '{path}', which already exists; pass "
            "overwrite=True (tfvae export --overwrite) to replace it (nothing was changed)."
        )
    replaceable = path.is_dir() and not path.is_symlink() and (
        (path / "saved_model.pb").is_file() or not any(path.iterdir())
    )
    if not replaceable:
        raise FileExistsError(
            "Expected the path to overwrite to be a SavedModel directory (or an empty one). "
            f"Received: '{path}', which is not; refusing to replace it (nothing was changed)."
        )


#: The lock file inside an export's temporary folder, held (`flock`) while the export runs.
_LOCK_FILE = "export.lock"
#: A temporary folder without a lock file (one being created, or an older tfvae's) is left alone
#: this long, counted from its last change.
_UNLOCKED_GRACE_SECONDS = 600


def _temporary_sibling(path: Path, role: str) -> Path:
    """Creates a new empty directory `.NAME.<random>.ROLE` beside `path` (umask permissions)."""
    while True:
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.{role}"
        with contextlib.suppress(FileExistsError):
            candidate.mkdir()
            return candidate


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Creates `path` holding this process's id and holds an exclusive `flock` on it; the
    kernel releases the lock when the process ends, however it ends.

    The file is locked under another name and renamed to `path`, so that whoever finds `path`
    finds it locked.
    """
    unlocked = path.with_name(path.name + ".new")
    with unlocked.open("w") as handle:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(unlocked, path)
        yield


def _is_abandoned(workspace: Path) -> bool:
    """Whether no live export holds the temporary folder `workspace`."""
    lock_file = workspace / _LOCK_FILE
    try:
        handle = lock_file.open("r")
    except FileNotFoundError:
        try:
            age = time.time() - workspace.stat().st_mtime
        except FileNotFoundError:
            return False  # already gone
        return age > _UNLOCKED_GRACE_SECONDS
    with handle:
        if fcntl is None:
            return False  # no way to tell: never touch it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live export holds it
        return True


def _clean_leftovers(path: Path) -> None:
    """Removes the temporary folders of killed exports to `path`; restores a moved-aside export.

    An export killed while writing leaves `.NAME.<hex>.tmp`; it is removed unless a live export
    holds its lock. An export killed between its two renames leaves the previous export as
    `.NAME.<hex>.old` and no `path`: it is the only copy, so it is moved back (and never deleted).
    """
    prefix = f".{path.name}."
    leftovers = sorted(path.parent.glob(f"{glob.escape(prefix)}*"))
    for workspace in leftovers:
        if workspace.name.endswith(".tmp") and workspace.is_dir() and _is_abandoned(workspace):
            shutil.rmtree(workspace, ignore_errors=True)
    for previous in leftovers:
        if not previous.name.endswith(".old") or not previous.is_dir() or path.exists():
            continue
        # Its export may still be running (between its renames): then its workspace is locked.
        workspace = previous.with_name(previous.name[: -len(".old")] + ".tmp")
        if workspace.is_dir() and not _is_abandoned(workspace):
            continue
        os.replace(previous, path)
        print(f"tfvae: '{path}' was missing after an interrupted export; restored the previous "
              f"export from '{previous}'", file=sys.stderr)


@contextlib.contextmanager
def _atomic_directory(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yields an empty temporary directory; moves it onto `path` on success.

    The directory lies in a locked workspace `.NAME.<hex>.tmp` beside `path` (see
    `_clean_leftovers`). With `overwrite`, the previous directory is moved aside to
    `.NAME.<hex>.old` first and deleted only once the new one is in place; if anything fails, it is
    moved back. Nothing temporary survives, unless the process is killed: the next export to
    `path` cleans up after it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    workspace = _temporary_sibling(path, "tmp")
    previous = None
    try:
        with _lock(workspace / _LOCK_FILE):
            staging = workspace / "export"
            staging.mkdir()
            try:
                yield staging
                _check_target(path, overwrite)  # again: something may have appeared meanwhile
                if path.exists():
                    previous = workspace.with_name(workspace.name[: -len(".tmp")] + ".old")
                    os.replace(path, previous)
                _move_into_place(staging, path)
            except BaseException:
                if previous is not None and not path.exists():
                    os.replace(previous, path)
                    previous = None
                raise
            finally:
                if previous is not None:  # the new export is in place
                    shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _move_into_place(source: Path, target: Path) -> None:
    # One rename within one directory: atomic on POSIX. (A function of its own so that tests
    # can make this last step fail.)
    os.replace(source, target)


def _write_metadata(directory: Path, metadata: dict) -> None:
    metadata_file = directory / METADATA_PATH
    metadata_file.parent.mkdir(parents=True, exist_ok=True)
    metadata_file.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def export_saved_model(
    vae, path: str | os.PathLike, overwrite: bool = False, metadata: dict | None = None
) -> Path:
    """Exports `vae` as a SavedModel that TensorFlow alone can load and serve.

    Endpoints (each a `tf.function` whose batch dimension is None; every output is a dict of
    float32 tensors, so `saved_model_cli show --all` and TF Serving see named inputs and outputs;
    B is the batch size, D the latent size, [H, W, C] the image shape):

    - `encode(images [B, H, W, C])` -> `{"loc": [B, D], "scale": [B, D]}`, the posterior q(z|x)
      (for a flow posterior, `iaf`, its base Gaussian before the flow steps: `posterior_sample`
      gives samples of q(z|x) itself);
    - `embed(images)` -> `{"embedding": [B, D]}`, the (base) posterior mean;
    - `decode(z [B, D])` -> `{"images": [B, H, W, C], "parameters": [B, H, W, C * P]}`, the
      likelihood's mean image and its raw parameters, P per sub-pixel (the metadata's
      `parameters_per_subpixel`, laid out as its `likelihood_parameters` says: channel c's P
      parameters are `parameters[..., c * P:(c + 1) * P]`): logits for Bernoulli (P = 1), the
      mean for Gaussian (P = 1), 256 logits for the categorical, 3M for the discretized
      logistic mixture. `images` is always an image, whatever P;
    - `sample(num_samples int32 [], seed int64 [])` -> `{"images": [n, H, W, C]}`, the mean images
      (the likelihood's `mean`, an image for every likelihood) of z drawn from the prior with
      stateless random ops: the same seed gives the same images;
    - `reconstruct(images)` -> `{"images": [B, H, W, C]}`, the mean reconstruction (`vae(images)`),
      an image for every likelihood;
    - `elbo(images, seed int64 [])` -> `{"elbo", "reconstruction", "kl"}`, each `[B]`: the
      single-sample ELBO with posterior noise `tf.random.stateless_normal([1, B, D],
      seed=stateless_seed(seed))` (the first draw of `posterior_sample`) instead of the model's stateful SeedGenerator, so a given seed
      gives the same value every time (the model's `compute_elbo_terms` with that noise);
    - `posterior_sample(images, num_samples int32 [], seed int64 [])` -> `{"z": [K, B, D],
      "log_q": [K, B]}`: K reparameterized z ~ q(z|x) per image with their exact log q(z|x)
      (a flow's too), noise `tf.random.stateless_normal([K, B, D], seed=stateless_seed(seed))`;
    - `prior_log_prob(z [K, B, D])` -> `{"log_prob": [K, B]}`, log p(z);
    - `log_likelihood(images [B, H, W, C], z [K, B, D])` -> `{"log_likelihood": [K, B]}`,
      log p(x|z_k) summed over sub-pixels. With these three a TF-only consumer computes importance
      weights log w = log_likelihood + log_prob - log_q and -log p(x) ~= -(logsumexp_k log w - log K),
      the model's `importance_weighted_nll`;
    - `serving_default` = `reconstruct`.

    A `tfvae.ConditionalVAE` exports the same endpoints, each also taking the class labels, int32
    ids `labels [B]` (`CONDITIONAL_ENDPOINTS`): `encode(images, labels)`, `embed(images, labels)`,
    `decode(z, labels)`, `sample(num_samples, seed, labels [num_samples])`,
    `reconstruct(images, labels)`, `elbo(images, labels, seed)`, `posterior_sample(images, labels,
    num_samples, seed)`, `prior_log_prob(z, labels)` (log p(z|y)) and `log_likelihood(images, z,
    labels)` (log p(x|z, y)); the metadata says `"conditional": true` and `num_classes`.

    The metadata (`export_metadata`) is written to `PATH/assets.extra/tfvae.json`.

    Args:
        vae: a `tfvae.VAE` (built, as every VAE is).
        path: str or Path. The SavedModel directory to create.
        overwrite: bool. Replace an existing export at `path`. The old export stays in place
            until the new one is complete.
        metadata: optional dict of JSON-serializable entries added to the metadata.

    Returns:
        `Path(path)`.

    Raises:
        ValueError: `vae` is not a `tfvae.VAE`, or `metadata` is not JSON-serializable.
        FileExistsError: `path` exists and `overwrite` is False, or `path` is not a SavedModel
            directory (nor an empty one) that could be replaced.
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"Expected a tfvae.VAE to export. Received: {type(vae).__name__}")
    path = Path(path)
    target = Path(os.path.abspath(path))  # so that ".", "exports/" and the like have a parent
    _check_target(target, overwrite)
    metadata = export_metadata(vae, metadata)
    try:
        json.dumps(metadata)
    except TypeError as error:
        raise ValueError(f"Expected JSON-serializable metadata. Received: {error}") from None

    archive = keras.export.ExportArchive()
    archive.track(vae)
    if isinstance(vae, ConditionalVAE):
        endpoints, signatures = _ConditionalEndpoints(vae), _conditional_input_signatures(vae)
    else:
        endpoints, signatures = _Endpoints(vae), _input_signatures(vae)
    # `reconstruct` first: ExportArchive makes the first endpoint `serving_default`.
    for name in ("reconstruct", *(name for name in ENDPOINTS if name != "reconstruct")):
        archive.add_endpoint(name, getattr(endpoints, name), input_signature=signatures[name])
    with _atomic_directory(target, overwrite) as staging:
        archive.write_out(str(staging), verbose=False)
        _write_metadata(staging, metadata)
    return path
