"""Runs tf.distribute checks on logical CPU devices and prints their findings as JSON.

Used by tests/test_distribute.py in a fresh process: logical devices must be configured before
TensorFlow initializes, which pytest's process has long done.

    python tests/mirrored_checks.py one-step --replicas 3 --batch-size 7
    python tests/mirrored_checks.py curves --replicas 2 --epochs 3
    python tests/mirrored_checks.py xla --replicas 2
    python tests/mirrored_checks.py one-step --replicas 2 --batch-size 7 --objective iwae
    python tests/mirrored_checks.py one-step --replicas 2 --batch-size 7 --posterior iaf
    python tests/mirrored_checks.py one-step --replicas 2 --batch-size 7 --prior vamp
    python tests/mirrored_checks.py one-step --replicas 2 --batch-size 7 --num-classes 3

Several checks on the same number of replicas in one process (TensorFlow and tfvae are imported
once, which takes seconds), by name; a check that raises gives `{"error": traceback}`:

    python tests/mirrored_checks.py many --replicas 2 \
        '{"iwae": ["one-step", "--batch-size", "7", "--objective", "iwae"], "xla": ["xla"]}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.backend.tensorflow import trainer  # noqa: E402 (private: what tfvae's fix replaces)

#: Keras's own trainer functions, taken before `tfvae.distribute` may replace them with its fix.
KERAS_TRAINER_FUNCTIONS = (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica)


@contextlib.contextmanager
def keras_without_fix():
    """Keras's own `fit` inside the block, even after `distribute.get_strategy` installed its fix
    (it stays installed for the rest of the process: several checks may run in one process)."""
    fixed = (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica)
    trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica = KERAS_TRAINER_FUNCTIONS
    try:
        yield
    finally:
        trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica = fixed


def split_cpu(replicas: int) -> list[str]:
    """Splits the CPU into `replicas` logical devices (once per process); returns their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if tf.config.get_logical_device_configuration(cpu) is None:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) != replicas:
        raise ValueError(f"Expected {replicas} logical CPU devices in this process. Received: {devices}")
    return devices


def fixed_noise_vae_class(conditional: bool = False):
    import tfvae  # noqa: PLC0415

    class FixedNoiseVAE(tfvae.ConditionalVAE if conditional else tfvae.VAE):
        """The same posterior noise for every example, wherever it is computed.

        One fixed, non-zero vector per latent dimension, broadcast over the batch, so a step on
        one device and on several replicas reparameterize every example identically.
        """

        def draw_noise(self, shape):
            row = tf.linspace(-1.5, 1.2, self.latent_dim)
            noise = tf.broadcast_to(row, shape)
            if noise.shape.rank == 3:  # K importance samples: a different vector for each
                noise += tf.reshape(tf.linspace(-1.0, 1.0, tf.shape(noise)[0]), [-1, 1, 1])
            return noise

    return FixedNoiseVAE


def build_model(vae_class, image_shape, seed=0, objective=None, likelihood="gaussian",
                posterior="diagonal_gaussian", prior="standard_normal", num_classes=0):
    import tfvae  # noqa: PLC0415

    # A VampPrior of 4 pseudo-inputs: its encoding runs inside every replica's step.
    settings = {"components": 4, "seed": seed} if prior in ("mixture", "vamp") else {}
    prior = tfvae.distributions.get_prior(prior, **settings)

    likelihood = tfvae.distributions.get_likelihood(likelihood)
    posterior = tfvae.distributions.get_posterior(posterior)
    encoder = tfvae.build_conv_encoder(
        image_shape, 3, filters=(4,), hidden_units=8, context_units=posterior.context_units,
        num_classes=num_classes or None,
    )
    decoder = tfvae.build_conv_decoder(
        3, image_shape, filters=(4,), hidden_units=8,
        parameters_per_subpixel=likelihood.parameters_per_subpixel, num_classes=num_classes or None,
    )
    if num_classes:  # a conditional VAE with a learned Gaussian per class
        return vae_class(
            encoder, decoder, num_classes, likelihood=likelihood, class_prior="learned", seed=seed,
            objective=objective, posterior=posterior,
        )
    return vae_class(
        encoder, decoder, likelihood=likelihood, prior=prior, seed=seed, objective=objective,
        posterior=posterior,
    )


def make_objective(name: str, vae, images):
    """The objective of `--objective`; free bits get a lambda between the dimensions' mean KLs
    (global batch), so that some dimensions are penalized and others are not."""
    from tfvae.objectives import ELBO, IWAE, kl_per_dimension  # noqa: PLC0415

    if name == "elbo":
        return None
    if name == "iwae":
        return IWAE(5)
    mean_kl = np.sort(kl_per_dimension(vae.encode(images), vae.prior_distribution()).numpy().mean(axis=0))
    return ELBO(free_bits=float((mean_kl[0] + mean_kl[-1]) / 2))


def trainable_weights(vae) -> dict:
    """The trainable weights by position and name (`3:conv_0/kernel`); names differ by suffix."""
    return {
        f"{index}:{variable.path.split('/', 1)[-1]}": variable.numpy()
        for index, variable in enumerate(vae.trainable_variables)
    }


def one_step(args) -> dict:
    """One SGD step on one fixed batch: one device vs a `replicas`-replica MirroredStrategy."""
    import keras  # noqa: PLC0415

    from tfvae import distribute  # noqa: PLC0415

    devices = split_cpu(args.replicas)
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((args.batch_size, 8, 8, 1)).astype("float32")
    labels = np.arange(args.batch_size) % args.num_classes if args.num_classes else None
    vae_class = fixed_noise_vae_class(conditional=bool(args.num_classes))

    def one_fit_step(strategy):
        with strategy.scope():
            vae = build_model(vae_class, images.shape[1:], objective=objective,
                              likelihood=args.likelihood, posterior=args.posterior, prior=args.prior,
                              num_classes=args.num_classes)
            vae.set_weights(initial_model.get_weights())
            vae.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
        history = vae.fit(images, labels, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        logs = {name: values[0] for name, values in history.history.items()}
        return trainable_weights(vae), logs

    initial_model = build_model(vae_class, images.shape[1:], likelihood=args.likelihood,
                                posterior=args.posterior, prior=args.prior, num_classes=args.num_classes)
    objective = make_objective(args.objective, initial_model, images)
    initial_weights = trainable_weights(initial_model)
    single_weights, single_logs = one_fit_step(tf.distribute.get_strategy())

    result = {}
    # Keras alone (no tfvae fix) cannot start fit when the replicas' batches differ in size.
    try:
        with keras_without_fix():
            one_fit_step(tf.distribute.MirroredStrategy(devices))
        result["error_without_fix"] = None
    except Exception as error:  # noqa: BLE001 (the test reads which error it was)
        result["error_without_fix"] = f"{type(error).__name__}: {error}"[:300]

    strategy = distribute.get_strategy("mirrored", num_cpu_devices=args.replicas)
    replica_batches = []
    for batch in strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(images).batch(args.batch_size)
    ):
        parts = strategy.experimental_local_results(batch)
        replica_batches = [int(part.shape[0]) for part in parts]
    mirrored_weights, mirrored_logs = one_fit_step(strategy)
    result.update(
        replicas=strategy.num_replicas_in_sync,
        replica_batch_sizes=replica_batches,
        weight_changes={
            name: float(np.max(np.abs(single_weights[name] - initial_weights[name])))
            for name in initial_weights
        },
        weight_differences={
            name: float(np.max(np.abs(single_weights[name] - mirrored_weights[name])))
            for name in initial_weights
        },
        single_logs=single_logs,
        mirrored_logs=mirrored_logs,
        objective=repr(objective),
        replica_draws=replica_noise(strategy),
    )
    return result


def replica_noise(strategy) -> list:
    """The posterior noise each replica draws in one `strategy.run` of tfvae's draw_noise."""
    import tfvae  # noqa: PLC0415

    with strategy.scope():
        vae = tfvae.build_conv_vae((8, 8, 1), 3, filters=(4,), seed=5)
    draws = strategy.run(tf.function(lambda: vae.draw_noise((4, 3))))
    return [draw.numpy().tolist() for draw in strategy.experimental_local_results(draws)]


def curves(args) -> dict:
    """Loss curves of a few epochs on digits: one device vs a `replicas`-replica strategy."""
    import keras  # noqa: PLC0415

    import tfvae  # noqa: PLC0415
    from tfvae import distribute  # noqa: PLC0415
    from tfvae.data import load_digits  # noqa: PLC0415

    split_cpu(args.replicas)
    (train_images, _), (validation_images, _) = load_digits(seed=0)

    def run(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            vae = tfvae.build_conv_vae((8, 8, 1), 4, filters=(16,), seed=0)
            vae.compile(optimizer=keras.optimizers.Adam(2e-3))
        history = vae.fit(
            train_images,
            validation_data=validation_images,
            batch_size=64,
            epochs=args.epochs,
            verbose=0,
        )
        return history.history

    return {
        "single": run(tf.distribute.get_strategy()),
        "mirrored": run(distribute.get_strategy("mirrored", num_cpu_devices=args.replicas)),
    }


def xla(args) -> dict:
    """What Keras does with `jit_compile` under a `replicas`-replica MirroredStrategy."""
    import keras  # noqa: PLC0415

    import tfvae  # noqa: PLC0415
    from tfvae import distribute  # noqa: PLC0415
    from tfvae.data import load_digits  # noqa: PLC0415

    split_cpu(args.replicas)
    (train_images, _), _ = load_digits(seed=0)
    strategy = distribute.get_strategy("mirrored", num_cpu_devices=args.replicas)
    result = {}
    for jit_compile in ("auto", True):
        with strategy.scope():
            vae = tfvae.build_conv_vae((8, 8, 1), 4, filters=(16,), seed=0)
            vae.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=jit_compile)
        try:
            vae.fit(train_images[:256], batch_size=64, epochs=1, verbose=0)
            error = None
        except Exception as caught:  # noqa: BLE001 (the test reads which error it was)
            error = f"{type(caught).__name__}: {caught}"[-2000:]
        result[f"jit_compile={jit_compile}"] = {"resolved": vae.jit_compile, "error": error}
    return result


CHECKS = {"one-step": one_step, "curves": curves, "xla": xla}


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--objective", choices=["elbo", "iwae", "free-bits"], default="elbo")
    parser.add_argument("--likelihood", default="gaussian", help="one-step: a tfvae likelihood name")
    parser.add_argument("--posterior", default="diagonal_gaussian", help="one-step: a tfvae posterior name")
    parser.add_argument("--prior", default="standard_normal", help="one-step: a tfvae prior name")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="one-step: a ConditionalVAE over this many classes (0: unconditional)")
    return parser


def run_many(replicas: int, checks: dict) -> dict:
    """Runs the checks `{name: [check, arguments...]}` in this process on `replicas` replicas.

    Each check starts as in a process of its own, but its strategies' collective keys start past
    those of the checks before it (as TensorFlow's own tests do), and Keras's trainer may hold
    tfvae's fix already (`one-step` takes it out for its run without the fix).
    """
    import keras  # noqa: PLC0415

    results = {}
    for name, argv in checks.items():
        args = check_parser().parse_args([*argv, "--replicas", str(replicas)])
        keras.backend.clear_session()  # fresh layer names and seeds
        # Every MirroredStrategy numbers its collective ops from this base: without a new base,
        # a check's all-reduces would reuse the keys of another model's (other shapes) and fail.
        tf.distribute.MirroredStrategy._collective_key_base += 100_000
        try:
            results[name] = CHECKS[args.check](args)
        except Exception:  # noqa: BLE001 (the test of this check reports it)
            results[name] = {"error": traceback.format_exc()[-3000:]}
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["many"]:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--replicas", type=int, default=2)
        parser.add_argument("checks", type=json.loads, help='JSON: {"name": ["one-step", "--batch-size", "7"], ...}')
        args = parser.parse_args(argv[1:])
        print("RESULT " + json.dumps(run_many(args.replicas, args.checks)))
        return 0
    args = check_parser().parse_args(argv)
    print("RESULT " + json.dumps(CHECKS[args.check](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
