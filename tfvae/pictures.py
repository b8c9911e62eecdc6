"""The pictures of a run: samples, reconstructions, interpolations, latent maps, loss curves;
for a conditional model, samples per class and style transfer.

Image grids come from `tfvae.images`; charts are drawn with matplotlib's Agg backend (no screen)
and written atomically like every file of a run.
"""

from __future__ import annotations

import io
import os
from statistics import NormalDist

import numpy as np

from tfvae.files import write_bytes_atomic
from tfvae.images import image_grid, interleave_pairs, save_png


def upscale_for(image_shape) -> int:
    """Small images (8x8 digits) are upscaled so a grid is visible; 64x64 ones are not."""
    return max(1, 64 // max(image_shape[0], image_shape[1]))


def model_classes(vae) -> int | None:
    """C, the classes of a conditional model (`tfvae.ConditionalVAE`); None for a `tfvae.VAE`."""
    return getattr(vae, "num_classes", None)


def labels_by_row(num_classes: int, per_row: int) -> np.ndarray:
    """Class ids `[num_classes * per_row]` for a grid with one row per class: row c holds c."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_row)


def sample_grid(vae, num_samples: int, seed: int = 0, label: int | None = None, scale: int = 1) -> np.ndarray:
    """The uint8 grid of images decoded from prior samples.

    For a conditional model, `label` draws all `num_samples` from p(z|y=label) under that
    class; without it the grid has one row per class, `max(1, num_samples // C)` samples each.

    Args:
        vae: a `tfvae.VAE` or `tfvae.ConditionalVAE`.
        num_samples: int >= 1.
        seed: int. The same seed draws the same latent points.
        label: None, or a class id of a conditional model.
        scale: integer upscaling of each image (see `upscale_for`).

    Returns:
        uint8 `[rows * (H + 2) + 2, columns * (W + 2) + 2, C]`.

    Raises:
        ValueError: a label for an unconditional model or out of range (see `ConditionalVAE.sample`).
    """
    num_classes = model_classes(vae)
    if num_classes is None or label is not None:
        labels = {} if label is None else {"labels": label}
        return image_grid(np.asarray(vae.sample(num_samples, seed=seed, **labels)), scale=scale)
    per_row = max(1, num_samples // num_classes)
    labels = labels_by_row(num_classes, per_row)
    return image_grid(np.asarray(vae.sample(len(labels), seed=seed, labels=labels)), columns=per_row, scale=scale)


def save_samples(vae, path, num_samples: int = 64, seed: int = 0) -> None:
    """Grid of `num_samples` images decoded from prior samples; one row per class for a
    conditional model (see `sample_grid`)."""
    save_png(path, sample_grid(vae, num_samples, seed, scale=upscale_for(vae.image_shape)))


def reconstruction_grid(vae, images, labels=None, scale: int = 1) -> np.ndarray:
    """Inputs and their reconstructions side by side (input left), 4 pairs per row.

    Args:
        vae: a `tfvae.VAE`, or a `tfvae.ConditionalVAE` with `labels`.
        images: `[N, H, W, C]` float images.
        labels: None, or the images' class ids `[N]` for a conditional model.
        scale: integer upscaling of each image.
    """
    pairs = interleave_pairs(images, np.asarray(vae.reconstruct(images, labels=labels)))
    return image_grid(pairs, columns=8, scale=scale)


def save_reconstructions(vae, images, path, labels=None) -> None:
    """Writes `reconstruction_grid` (with the images' `labels` for a conditional model)."""
    save_png(path, reconstruction_grid(vae, images, labels, scale=upscale_for(vae.image_shape)))


def first_of_each_class(labels, limit: int = 10) -> np.ndarray:
    """Indices of the first example of each class present in `labels` `[N]`, in class order,
    at most `limit` of them."""
    classes, first = np.unique(np.asarray(labels), return_index=True)
    return first[np.argsort(classes)][:limit]


def save_style_transfer(vae, images, labels, path) -> None:
    """The same z under every label: one row per image, the input first, then its posterior
    point decoded under class 0, 1, ..., C - 1 (`ConditionalVAE.transfer_style`).

    Args:
        vae: a `tfvae.ConditionalVAE`.
        images: `[N, H, W, C]` float images, one per row.
        labels: their class ids `[N]`.
        path: the PNG file to write (N rows, 1 + C columns).
    """
    num_classes = model_classes(vae)
    transferred = [np.asarray(vae.transfer_style(images, labels, target)) for target in range(num_classes)]
    rows = np.stack([np.asarray(images), *transferred], axis=1)  # [N, 1 + C, H, W, C]
    grid = image_grid(rows.reshape((-1, *rows.shape[2:])), columns=1 + num_classes, scale=upscale_for(vae.image_shape))
    save_png(path, grid)


def interpolate_latents(start, end, steps: int) -> np.ndarray:
    """Points on the straight lines from each `start[i]` to `end[i]`: `[len(start) * steps, D]`."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    path = (1 - weights) * np.asarray(start)[:, None, :] + weights * np.asarray(end)[:, None, :]
    return path.reshape(-1, path.shape[-1])


def decode_mean(vae, z, labels=None) -> np.ndarray:
    """The mean images of p(x|z) (p(x|z, y) given `labels`) for latent points `z` `[N, D]`.

    Args:
        vae: a `tfvae.VAE`, or a `tfvae.ConditionalVAE` with `labels`.
        z: `[N, D]` latent points.
        labels: None, or class ids `[N]` for a conditional model.

    Raises:
        ValueError: labels missing for a conditional model, or given to an unconditional one.
    """
    z = np.asarray(z, np.float32)
    num_classes = model_classes(vae)
    if (labels is None) != (num_classes is None):
        kind = "a conditional model" if num_classes else "an unconditional model"
        raise ValueError(f"Expected labels exactly for a conditional model. Received: labels={labels!r} for {kind}")
    if labels is None:
        return np.asarray(vae.likelihood.mean(vae.decoder_parameters(z, training=False)))
    with vae.conditioned_on(vae.one_hot(labels, len(z))):
        return np.asarray(vae.likelihood.mean(vae.decoder_parameters(z, training=False)))


def prior_latents(vae, count: int, seed, labels=None) -> np.ndarray:
    """`count` latent points drawn from p(z), or from p(z|y) of each of `labels` `[count]`.

    Args:
        vae: a `tfvae.VAE`, or a `tfvae.ConditionalVAE` with `labels`.
        count: int >= 1.
        seed: a stateless seed (an int pair).
        labels: None, or class ids `[count]` for a conditional model.

    Returns:
        float32 `[count, D]`.
    """
    distribution = vae.prior_distribution() if labels is None else vae.prior_distribution(labels)
    # A class prior has one Gaussian per label (batch [count]); N(0, I) is shared (batch []).
    shape = [] if distribution.batch_shape.rank else [count]
    return np.asarray(distribution.sample(shape, seed=seed), np.float32)


def save_interpolations(vae, images, path, steps: int = 10, labels=None) -> None:
    """Rows that walk in latent space from one image's posterior mean to the next one's.

    For a conditional model (with the images' `labels`) each row is encoded under its images'
    labels and decoded under the label of its first image: the walk changes the style, not
    the class.
    """
    means = np.asarray(vae.encode(images, labels=labels).mean())
    rows = len(means) // 2
    z = interpolate_latents(means[:rows], means[rows : 2 * rows], steps)
    row_labels = None if labels is None else np.repeat(np.asarray(labels)[:rows], steps)
    save_png(path, image_grid(decode_mean(vae, z, row_labels), columns=steps, scale=upscale_for(vae.image_shape)))


def latent_traversal(vae, dimension: int, base_z, steps: int = 10, span: float = 3.0, labels=None) -> np.ndarray:
    """Decodes each row of `base_z` with z[dimension] swept over [-span, span].

    Args:
        vae: a `tfvae.VAE`, or a `tfvae.ConditionalVAE` with `labels`; or a `tfvae.TwoLayerVAE`,
            whose decoder reads z1 only, the first D1 of its D1 + D2 dimensions.
        dimension: int in [0, latent_dim), in [0, D1) for a `tfvae.TwoLayerVAE`.
        base_z: `[R, D]` latent points, one per row.
        steps: images per row.
        span: the sweep's end points.
        labels: None, or class ids `[R]` of a conditional model: row r is decoded under labels[r].

    Returns:
        `[R * steps, H, W, C]` mean images, row-major.

    Raises:
        ValueError: `dimension` outside [0, latent_dim), or outside z1 for a two-layer model.
    """
    if not 0 <= dimension < vae.latent_dim:
        raise ValueError(
            f"Expected a latent dimension in [0, {vae.latent_dim}). Received: {dimension}"
        )
    decoded = vae.latent_dims[0]  # the decoder of a two-layer model reads z1 only
    if dimension >= decoded:
        raise ValueError(
            f"Expected a dimension of z1, in [0, {decoded}), for a model with stochastic layers of sizes "
            f"{tuple(vae.latent_dims)}: the decoder reads z1 only, so sweeping z2 would change no image. "
            f"Received: {dimension}"
        )
    base_z = np.asarray(base_z, np.float32)
    z = np.repeat(base_z, steps, axis=0)
    z[:, dimension] = np.tile(np.linspace(-span, span, steps, dtype=np.float32), len(base_z))
    return decode_mean(vae, z, None if labels is None else np.repeat(np.asarray(labels), steps))


def save_manifold(vae, path, size: int = 15) -> None:
    """For a 2-D latent space: decoded images on a grid of the prior's quantiles.

    Raises:
        ValueError: the model's latent space is not 2-D, or has two stochastic layers (a
            `tfvae.TwoLayerVAE`, whose prior p(z1|z2) p(z2) has no such grid).
    """
    if vae.latent_dim != 2 or len(vae.latent_dims) != 1:
        raise ValueError(
            "Expected a model with one stochastic layer and latent_dim == 2. Received: latent_dim="
            f"{vae.latent_dim}, latent_dims={tuple(vae.latent_dims)}"
        )
    quantiles = [NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, size)]
    grid = np.array([[x, y] for y in quantiles[::-1] for x in quantiles], np.float32)
    save_png(path, image_grid(decode_mean(vae, grid), columns=size, padding=0, scale=upscale_for(vae.image_shape)))


def _save_figure(figure, path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


def _pyplot():
    import matplotlib  # noqa: PLC0415 (import on demand: matplotlib is slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_latent_scatter(vae, images, labels, path) -> None:
    """Posterior means of a 2-D latent space, one point per image, coloured by label (a
    conditional model encodes each image under its label)."""
    plt = _pyplot()
    given = labels if model_classes(vae) is not None else None
    means = np.asarray(vae.encode(images, labels=given).mean())
    figure, axes = plt.subplots(figsize=(6, 5))
    points = axes.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=6)
    figure.colorbar(points, ax=axes, label="label")
    axes.set_xlabel("z[0]")
    axes.set_ylabel("z[1]")
    axes.set_title(f"Posterior means of {len(means)} validation images")
    _save_figure(figure, path)
    plt.close(figure)


def save_loss_curves(rows: list[dict], path: str | os.PathLike) -> None:
    """Training and validation loss per epoch, from the rows of `metrics.csv`."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = [int(row["epoch"]) + 1 for row in rows]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        values = [float(row[key]) for row in rows if row.get(key) not in (None, "")]
        if values:
            axes.plot(epochs[: len(values)], values, marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (-ELBO, nats per example)")
    axes.legend()
    axes.grid(alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)


def save_tuning_curve(
    latent_dims, values, path: str | os.PathLike, ylabel: str = "best validation loss", minimize: bool = True
) -> None:
    """One point per tuning trial (its objective against its latent size), and a line through
    the best value of each latent size (the lowest, or the highest when not `minimize`); the
    latent axis is logarithmic (base 2)."""
    plt = _pyplot()
    latent_dims = np.asarray(latent_dims, dtype=float)
    values = np.asarray(values, dtype=float)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(latent_dims, values, alpha=0.6, label="trials")
    sizes = np.unique(latent_dims)
    pick = np.min if minimize else np.max
    best = [pick(values[latent_dims == size]) for size in sizes]
    axes.plot(sizes, best, marker="o", color="C1", label="best per latent size")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(int(size)) for size in sizes])
    axes.set_xlabel("latent size")
    axes.set_ylabel(ylabel)
    axes.legend()
    axes.grid(alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)


def save_kl_per_dimension(kl_per_dimension, path: str | os.PathLike, active=None) -> None:
    """A bar chart of the mean KL(q(z_d|x) || p(z_d)) of each latent dimension d.

    Args:
        kl_per_dimension: `[D]` mean KLs in nats (see `tfvae.diagnostics`).
        path: the PNG file to write.
        active: optional `[D]` booleans: active units are drawn in one colour, the others
            (collapsed) in gray.
    """
    plt = _pyplot()
    values = np.asarray(kl_per_dimension, dtype=float)
    dims = np.arange(len(values))
    figure, axes = plt.subplots(figsize=(max(4.0, 0.35 * len(values) + 2.0), 3.5))
    colors = "C0" if active is None else ["C0" if used else "0.6" for used in active]
    axes.bar(dims, values, color=colors)
    axes.set_xlabel("latent dimension")
    axes.set_ylabel("KL (nats, mean per example)")
    title = f"KL per latent dimension: {values.sum():.2f} nats in all"
    if active is not None:
        title += f"; {int(np.count_nonzero(active))} of {len(values)} active (gray: inactive)"
    axes.set_title(title, fontsize=9)
    axes.set_xticks(dims if len(values) <= 32 else dims[:: max(1, len(values) // 16)])
    axes.grid(axis="y", alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)
