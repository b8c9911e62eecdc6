"""Model family: how the choice of likelihood, prior and posterior moves a VAE's likelihood.

Section `eight_bit` (issue 13): bits/dim on the gray (not binarized) MNIST test set of one
encoder/decoder pair trained the same number of epochs with three pixel likelihoods:

- `gaussian`: the Gaussian with a learned per-channel scale, trained and scored on uniformly
  dequantized data, (255 x + u) / 256: bits/dim = (NLL + D ln 256) / (D ln 2);
- `discretized_logistic`: a mixture of M logistics per sub-pixel over the 256 levels;
- `categorical`: a 256-way softmax per sub-pixel;
  (both probability masses over the levels k / 255: bits/dim = NLL / (D ln 2));

and, on request (`--variants`), `gaussian_predicted_scale` and `continuous_bernoulli` (dequantized
too). The NLL is the importance-weighted estimate with K samples (Burda et al., 2015) on the test
images, dequantized once with seed 1234 for the continuous densities. Also reported: the test
ELBO, training images/s, the number of parameters, the epochs and the wall time.

Section `priors` (issue 13): the test IW-NLL (K = `--prior-samples`, default 1000) on the MNIST
test set binarized once (pixel ~ Bernoulli(gray level), seed 1234) of the same encoder/decoder
pair, Bernoulli likelihood, trained the same number of epochs on the full training set with
dynamic binarization (fresh Bernoulli draws every epoch), with each prior:

- `standard_normal`: N(0, I);
- `mixture`: a learned mixture of `--mixture-components` (10) diagonal Gaussians;
- `vamp`: the VampPrior with `--vamp-components` (500) pseudo-inputs;
- `iaf`: N(0, I) with an IAF posterior of `--iaf-steps` (2) flow steps;
- `vamp_iaf`: the VampPrior with the IAF posterior (its components are the encoder's pre-flow
  Gaussians of the pseudo-inputs);

also the test ELBO, training images/s and parameters.

The script is organized in sections (`SECTIONS`), each a function of the same shape.

Needs: ../shared/data/mnist-train/train-images-idx3-ubyte.gz and
../shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz beside the repository (or --train-images /
--test-images). Nothing is downloaded.

Resumable: every finished variant is written to the results JSON at once (atomically), and its
trained model to `<out>.models/<section>-<variant>.keras`; a rerun with the same settings skips
finished variants and scores a trained model without training it again. Other settings start
over in their own entries (the key holds the settings).

Usage:
    python benchmarks/model_family.py [--epochs 10] [--train-subset N] [--test-subset N]
        [--samples 100] [--variants gaussian,discretized_logistic,categorical] [--out PATH]
    python benchmarks/model_family.py --sections priors [--epochs 10] [--prior-samples 1000]
        [--mixture-components 10] [--vamp-components 500] [--iaf-steps 2]
        [--prior-variants standard_normal,mixture,vamp,iaf,vamp_iaf]
    python benchmarks/model_family.py --tiny     # about a minute, a smoke test of every step

Cost (2 CPU cores): an epoch over the 60,000 training images takes minutes per variant, and the
categorical's 256 outputs per sub-pixel make it the slowest; the IW-NLL costs K decodes per test
image (K = 1000 on 10,000 test images: 10 million decodes per prior variant); the VampPrior
encodes its K pseudo-inputs every step (500 / 128: ~4x the encoder's work). Choose --epochs, --samples and --test-subset to fit the time you have, and report them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from binarization import EVALUATION_SEED, binarized_once, dynamically_binarized  # noqa: E402

from tfvae.data.idx import read_idx  # noqa: E402
from tfvae.data.preprocessing import uniform_dequantize  # noqa: E402
from tfvae.distributions import get_likelihood, get_posterior, get_prior  # noqa: E402
from tfvae.evaluation import bits_per_dim  # noqa: E402
from tfvae.files import write_json_atomic  # noqa: E402
from tfvae.models import build_conv_vae  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_IMAGES = SHARED_DATA / "mnist-train" / "train-images-idx3-ubyte.gz"
TEST_IMAGES = SHARED_DATA / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
EIGHT_BIT_VARIANTS = ("gaussian", "discretized_logistic", "categorical")
ALL_EIGHT_BIT_VARIANTS = (*EIGHT_BIT_VARIANTS, "gaussian_predicted_scale", "continuous_bernoulli")
#: Variant of the priors section -> the (prior, posterior) pair it trains.
PRIOR_VARIANTS = {
    "standard_normal": ("standard_normal", "diagonal_gaussian"),
    "mixture": ("mixture", "diagonal_gaussian"),
    "vamp": ("vamp", "diagonal_gaussian"),
    "iaf": ("standard_normal", "iaf"),
    "vamp_iaf": ("vamp", "iaf"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a result depends on (its key in the results file)."""

    epochs: int = 10
    train_subset: int | None = None
    test_subset: int | None = None
    samples: int = 100
    latent_dim: int = 32
    filters: tuple[int, ...] = (32, 64)
    batch_size: int = 128
    learning_rate: float = 1e-3
    components: int = 5
    prior_samples: int = 1000
    mixture_components: int = 10
    vamp_components: int = 500
    iaf_steps: int = 2
    seed: int = 0

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


TINY = {"epochs": 1, "train_subset": 128, "test_subset": 16, "samples": 4, "latent_dim": 4,
        "filters": (4,), "batch_size": 64, "components": 2, "prior_samples": 4, "mixture_components": 2,
        "vamp_components": 4, "iaf_steps": 1}


def read_eight_bit_images(path: Path, subset: int | None) -> np.ndarray:
    """uint8 images `[N, H, W, C]` from an IDX file, the first `subset` of them."""
    images = read_idx(path)
    if images.dtype != np.uint8:
        raise ValueError(f"Expected 8-bit (uint8) images in {path}. Received: {images.dtype}")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images[:subset] if subset else images


def is_density(likelihood) -> bool:
    """A continuous density trains and is scored on dequantized data."""
    return likelihood.num_values is None


def training_data(images: np.ndarray, batch_size: int, dequantize: bool, seed: int) -> tf.data.Dataset:
    """Shuffled batches of k / 255 (or, dequantized, (k + u) / 256 with fresh u every epoch)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images), seed=seed).batch(batch_size)
    dataset = dataset.map(lambda batch: tf.cast(batch, tf.float32) / 255.0)
    if dequantize:
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, batch_seeds)).map(
            lambda batch, batch_seed: uniform_dequantize(batch, tf.stack([batch_seed, tf.constant(1, tf.int64)]))
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def test_images(images: np.ndarray, dequantize: bool) -> np.ndarray:
    """The test images as k / 255, or dequantized once with `EVALUATION_SEED`."""
    if not dequantize:
        return (images / 255.0).astype(np.float32)
    noise = np.random.default_rng(EVALUATION_SEED).uniform(size=images.shape)
    return ((images + noise) / 256.0).astype(np.float32)


def run_eight_bit_variant(variant: str, settings: Settings, train: np.ndarray, test: np.ndarray,
                          model_path: Path) -> dict:
    """Trains (or reloads) one variant and scores it; returns its result."""
    takes_components = "components" in get_likelihood(variant).settings()
    likelihood = get_likelihood(variant, **({"components": settings.components} if takes_components else {}))
    dequantize = is_density(likelihood)
    seconds = images_per_second = None
    if model_path.exists():
        vae = keras.models.load_model(model_path)
    else:
        keras.utils.set_random_seed(settings.seed)
        vae = build_conv_vae(train.shape[1:], settings.latent_dim, filters=settings.filters,
                             likelihood=likelihood, seed=settings.seed)
        vae.compile(optimizer=keras.optimizers.Adam(settings.learning_rate))
        data = training_data(train, settings.batch_size, dequantize, settings.seed)
        started = time.perf_counter()
        vae.fit(data, epochs=settings.epochs, verbose=0)
        seconds = time.perf_counter() - started
        images_per_second = settings.epochs * len(train) / seconds
        model_path.parent.mkdir(parents=True, exist_ok=True)
        vae.save(model_path)
    scored = test_images(test, dequantize)
    elbo = vae.evaluate(scored, batch_size=settings.batch_size, verbose=0, return_dict=True)["elbo"]
    nll = vae.importance_weighted_nll(scored, num_samples=settings.samples, seed=EVALUATION_SEED).mean()
    data_kind = "dequantized" if dequantize else "8bit"
    return {
        "likelihood": variant,
        "likelihood_settings": vae.likelihood.settings(),
        "data": data_kind,
        "test_elbo": float(elbo),
        "test_iw_nll": float(nll),
        "bits_per_dim": bits_per_dim(float(nll), vae.image_shape, vae.likelihood, data_kind),
        "parameters": int(vae.count_params()),
        "train_seconds": seconds,
        "train_images_per_second": images_per_second,
    }


def eight_bit_section(settings: Settings, args, record) -> None:
    """Bits/dim of the 8-bit likelihoods on the gray test images."""
    train = read_eight_bit_images(args.train_images, settings.train_subset)
    test = read_eight_bit_images(args.test_images, settings.test_subset)
    for variant in args.variants:
        record("eight_bit", variant, lambda path, variant=variant: run_eight_bit_variant(variant, settings, train, test, path))


def run_prior_variant(variant: str, settings: Settings, train: np.ndarray, test: np.ndarray,
                      model_path: Path) -> dict:
    """Trains (or reloads) the model of one prior and scores it; returns its result."""
    name, posterior_kind = PRIOR_VARIANTS[variant]
    sizes = {"mixture": settings.mixture_components, "vamp": settings.vamp_components}
    prior = get_prior(name, components=sizes[name], seed=settings.seed) if name in sizes else get_prior(name)
    posterior = (get_posterior("iaf", steps=settings.iaf_steps) if posterior_kind == "iaf"
                 else get_posterior(posterior_kind))
    seconds = images_per_second = None
    if model_path.exists():
        vae = keras.models.load_model(model_path)
    else:
        keras.utils.set_random_seed(settings.seed)
        vae = build_conv_vae(train.shape[1:], settings.latent_dim, filters=settings.filters,
                             likelihood="bernoulli", prior=prior, posterior=posterior,
                             seed=settings.seed)
        vae.compile(optimizer=keras.optimizers.Adam(settings.learning_rate))
        data = dynamically_binarized(train, settings.batch_size, settings.seed)
        started = time.perf_counter()
        vae.fit(data, epochs=settings.epochs, verbose=0)
        seconds = time.perf_counter() - started
        images_per_second = settings.epochs * len(train) / seconds
        model_path.parent.mkdir(parents=True, exist_ok=True)
        vae.save(model_path)
    scored = binarized_once(test)
    elbo = vae.evaluate(scored, batch_size=settings.batch_size, verbose=0, return_dict=True)["elbo"]
    nll = vae.importance_weighted_nll(scored, num_samples=settings.prior_samples, seed=EVALUATION_SEED).mean()
    return {
        "prior": name,
        "prior_settings": vae.prior.settings(),
        "posterior": posterior_kind,
        "posterior_settings": vae.posterior.settings(),
        "data": "binary",
        "test_elbo": float(elbo),
        "test_iw_nll": float(nll),
        "iw_samples": settings.prior_samples,
        "bits_per_dim": bits_per_dim(float(nll), vae.image_shape, vae.likelihood, "binary"),
        "parameters": int(vae.count_params()),
        "train_seconds": seconds,
        "train_images_per_second": images_per_second,
    }


def priors_section(settings: Settings, args, record) -> None:
    """IW-NLL of each prior on the binarized test images."""
    train = read_eight_bit_images(args.train_images, settings.train_subset)
    test = read_eight_bit_images(args.test_images, settings.test_subset)
    for variant in args.prior_variants:
        record("priors", variant, lambda path, variant=variant: run_prior_variant(variant, settings, train, test, path))


#: Section name -> function(settings, args, record).
SECTIONS = {"eight_bit": eight_bit_section, "priors": priors_section}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--tiny", action="store_true", help="a < 1 minute smoke run: " + json.dumps(TINY))
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of %(default)s")
    parser.add_argument("--variants", default=",".join(EIGHT_BIT_VARIANTS), help=f"likelihoods of the eight_bit section, of {','.join(ALL_EIGHT_BIT_VARIANTS)} (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N images (default: all)")
    parser.add_argument("--test-subset", type=int, default=None, help="score the first N test images (default: all)")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="K importance samples (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--filters", default=",".join(map(str, defaults.filters)))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--components", type=int, default=defaults.components, help="M of the discretized logistic")
    parser.add_argument("--prior-variants", default=",".join(PRIOR_VARIANTS), help="priors of the priors section (default: %(default)s)")
    parser.add_argument("--prior-samples", type=int, default=defaults.prior_samples, help="K of the priors section's IW-NLL (default: %(default)s)")
    parser.add_argument("--mixture-components", type=int, default=defaults.mixture_components, help="M of the mixture prior (default: %(default)s)")
    parser.add_argument("--vamp-components", type=int, default=defaults.vamp_components, help="K, the VampPrior's pseudo-inputs (default: %(default)s)")
    parser.add_argument("--iaf-steps", type=int, default=defaults.iaf_steps, help="T, the IAF posterior's flow steps (default: %(default)s)")
    parser.add_argument("--train-images", type=Path, default=TRAIN_IMAGES)
    parser.add_argument("--test-images", type=Path, default=TEST_IMAGES)
    parser.add_argument("--out", type=Path, default=Path("model_family.json"), help="the results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(ALL_EIGHT_BIT_VARIANTS))
    if unknown:
        parser.error(f"Expected --variants among {','.join(ALL_EIGHT_BIT_VARIANTS)}. Received: {','.join(unknown)}")
    args.prior_variants = [v for v in args.prior_variants.split(",") if v]
    unknown = sorted(set(args.prior_variants) - set(PRIOR_VARIANTS))
    if unknown:
        parser.error(f"Expected --prior-variants among {','.join(PRIOR_VARIANTS)}. Received: {','.join(unknown)}")
    sections = [s for s in args.sections.split(",") if s]
    if set(sections) - set(SECTIONS):
        parser.error(f"Expected --sections among {','.join(SECTIONS)}. Received: {args.sections}")
    for path in (args.train_images, args.test_images):
        if not path.is_file():
            parser.error(f"Expected MNIST images (IDX) at {path}; no such file. Put them there or pass --train-images/--test-images.")
    values = dict(
        epochs=args.epochs, train_subset=args.train_subset, test_subset=args.test_subset, samples=args.samples,
        latent_dim=args.latent_dim, filters=tuple(int(f) for f in args.filters.split(",")),
        batch_size=args.batch_size, components=args.components, prior_samples=args.prior_samples,
        mixture_components=args.mixture_components, vamp_components=args.vamp_components,
        iaf_steps=args.iaf_steps,
    )
    if args.tiny:
        values.update(TINY)
    settings = Settings(**values)

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = results.setdefault("runs", {})
    entry = runs.setdefault(settings.key(), {"settings": dataclasses.asdict(settings), "results": {}})
    models = args.out.with_name(args.out.name + ".models") / hashlib.sha1(settings.key().encode()).hexdigest()[:12]

    def record(section: str, variant: str, run) -> None:
        name = f"{section}/{variant}"
        if name in entry["results"]:
            print(f"{name}: done already, skipped")
            return
        started = time.perf_counter()
        result = run(models / f"{section}-{variant}.keras")
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        entry["results"][name] = result
        write_json_atomic(args.out, results)
        samples = result.get("iw_samples", settings.samples)
        print(f"{name}: {result['bits_per_dim']:.4f} bits/dim (IW-NLL {result['test_iw_nll']:.2f} nats, "
              f"K={samples}; {result['parameters']} parameters)", flush=True)

    for section in sections:
        SECTIONS[section](settings, args, record)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
