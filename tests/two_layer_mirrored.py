"""One SGD step of a `tfvae.TwoLayerVAE` on one device and on logical-CPU replicas, as JSON.

Used by tests/test_two_layer.py in a fresh process (logical devices must be configured before
TensorFlow initializes), like tests/mirrored_checks.py, whose helpers it reuses:

    python tests/two_layer_mirrored.py --replicas 2 --batch-size 7 --prior vamp
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from mirrored_checks import split_cpu, trainable_weights  # noqa: E402


def build_model(prior: str, objective: str):
    """A tiny two-layer model whose posterior noise is the same for every example, wherever it
    is computed: a fixed, non-zero vector per latent dimension (and per importance sample)."""
    import tfvae  # noqa: PLC0415

    class FixedNoiseTwoLayerVAE(tfvae.TwoLayerVAE):
        def draw_noise(self, shape):
            noise = tf.broadcast_to(tf.linspace(-1.5, 1.2, self.latent_dim), shape)
            if noise.shape.rank == 3:
                noise += tf.reshape(tf.linspace(-1.0, 1.0, tf.shape(noise)[0]), [-1, 1, 1])
            return noise

    settings = {"components": 4, "seed": 0} if prior in ("mixture", "vamp") else {}
    template = tfvae.build_conv_two_layer_vae(
        (8, 8, 1), latent_dims=(3, 2), filters=(4,), hidden_units=8, seed=0,
        prior=tfvae.distributions.get_prior(prior, **settings),
        objective=tfvae.objectives.IWAE(3) if objective == "iwae" else None,
    )
    config = template.get_config()
    return FixedNoiseTwoLayerVAE.from_config(config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=7)
    parser.add_argument("--prior", default="standard_normal")
    parser.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    args = parser.parse_args(argv)

    import keras  # noqa: PLC0415

    from tfvae import distribute  # noqa: PLC0415

    split_cpu(args.replicas)
    keras.utils.set_random_seed(0)
    images = (np.random.default_rng(0).random((args.batch_size, 8, 8, 1)) > 0.5).astype("float32")
    initial_model = build_model(args.prior, args.objective)
    initial_weights = trainable_weights(initial_model)

    def one_fit_step(strategy):
        with strategy.scope():
            vae = build_model(args.prior, args.objective)
            vae.set_weights(initial_model.get_weights())
            vae.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
        history = vae.fit(images, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        return trainable_weights(vae), {name: values[0] for name, values in history.history.items()}

    single_weights, single_logs = one_fit_step(tf.distribute.get_strategy())
    strategy = distribute.get_strategy("mirrored", num_cpu_devices=args.replicas)
    mirrored_weights, mirrored_logs = one_fit_step(strategy)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "weight_changes": {
            name: float(np.max(np.abs(single_weights[name] - initial_weights[name]))) for name in initial_weights
        },
        "weight_differences": {
            name: float(np.max(np.abs(single_weights[name] - mirrored_weights[name]))) for name in initial_weights
        },
        "single_logs": single_logs,
        "mirrored_logs": mirrored_logs,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
