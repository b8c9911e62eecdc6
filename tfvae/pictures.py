"""The pictures of a run: samples, reconstructions, interpolations, latent maps, loss curves.

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


def save_samples(vae, path, num_samples: int = 64, seed: int = 0) -> None:
    """Grid of `num_samples` images decoded from prior samples."""
    images = np.asarray(vae.sample(num_samples, seed=seed))
    save_png(path, image_grid(images, scale=upscale_for(vae.image_shape)))


def save_reconstructions(vae, images, path) -> None:
    """Inputs and their reconstructions side by side (input left), 4 pairs per row."""
    pairs = interleave_pairs(images, np.asarray(vae.reconstruct(images)))
    save_png(path, image_grid(pairs, columns=8, scale=upscale_for(vae.image_shape)))


def interpolate_latents(start, end, steps: int) -> np.ndarray:
    """Points on the straight lines from each `start[i]` to `end[i]`: `[len(start) * steps, D]`."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    path = (1 - weights) * np.asarray(start)[:, None, :] + weights * np.asarray(end)[:, None, :]
    return path.reshape(-1, path.shape[-1])


def decode_mean(vae, z) -> np.ndarray:
    """The mean images of p(x|z) for latent points `z` `[N, D]`."""
    return np.asarray(vae.likelihood.mean(vae.decoder_parameters(np.asarray(z, np.float32), training=False)))


def save_interpolations(vae, images, path, steps: int = 10) -> None:
    """Rows that walk in latent space from one image's posterior mean to the next one's."""
    means = np.asarray(vae.encode(images).mean())
    rows = len(means) // 2
    z = interpolate_latents(means[:rows], means[rows : 2 * rows], steps)
    save_png(path, image_grid(decode_mean(vae, z), columns=steps, scale=upscale_for(vae.image_shape)))


def latent_traversal(vae, dimension: int, base_z, steps: int = 10, span: float = 3.0) -> np.ndarray:
    """Decodes each row of `base_z` with z[dimension] swept over [-span, span].

    Raises:
        ValueError: `dimension` outside [0, latent_dim).
    """
    if not 0 <= dimension < vae.latent_dim:
        raise ValueError(
            f"Expected a latent dimension in [0, {vae.latent_dim}). Received: {dimension}"
        )
    base_z = np.asarray(base_z, np.float32)
    z = np.repeat(base_z, steps, axis=0)
    z[:, dimension] = np.tile(np.linspace(-span, span, steps, dtype=np.float32), len(base_z))
    return decode_mean(vae, z)


def save_manifold(vae, path, size: int = 15) -> None:
    """For a 2-D latent space: decoded images on a grid of the prior's quantiles.

    Raises:
        ValueError: the model's latent space is not 2-D.
    """
    if vae.latent_dim != 2:
        raise ValueError(f"Expected a model with latent_dim == 2. Received: latent_dim={vae.latent_dim}")
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
    """Posterior means of a 2-D latent space, one point per image, coloured by label."""
    plt = _pyplot()
    means = np.asarray(vae.encode(images).mean())
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
