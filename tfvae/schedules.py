"""KL schedules: the factor, in [0, 1], that multiplies beta at each training step.

A schedule is a function of the optimizer's step count (`optimizer.iterations`, the number of
updates applied before the current one). `tfvae.objectives.ELBO` evaluates it inside the compiled
train step, so it takes effect whatever `steps_per_execution` is, under every strategy, and it
resumes with the optimizer's state. Schedules are serializable with the model.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _check_steps(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    return value


class KLSchedule:
    """Base class: `schedule(step)` is the KL weight's factor at `step`, a float32 scalar."""

    #: A constant schedule leaves beta to the model's `beta` variable (callbacks may change it).
    is_constant = False

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="tfvae")
class ConstantSchedule(KLSchedule):
    """Factor 1 at every step: beta is what the model's `beta` variable holds."""

    is_constant = True

    def __call__(self, step):
        del step
        return tf.constant(1.0, tf.float32)


@keras.saving.register_keras_serializable(package="tfvae")
class LinearWarmup(KLSchedule):
    """min(1, step / warmup_steps): from 0 up to 1 linearly (Bowman et al. 2016; Sønderby et al. 2016).

    Args:
        warmup_steps: int >= 1. Steps until the full beta.

    Raises:
        ValueError: warmup_steps < 1.
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps)

    def __call__(self, step):
        return tf.minimum(1.0, tf.cast(step, tf.float32) / float(self.warmup_steps))

    def get_config(self):
        return {"warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tfvae")
class CyclicalAnnealing(KLSchedule):
    """Cyclical annealing (Fu et al., 2019): each cycle ramps from 0 to 1, then holds 1.

    With tau = (step mod cycle_steps) / cycle_steps the factor is min(1, tau / ramp_fraction)
    (Fu et al. use ramp_fraction R = 0.5).

    Args:
        cycle_steps: int >= 1. Steps per cycle.
        ramp_fraction: float in (0, 1]. The part of each cycle spent ramping up.

    Raises:
        ValueError: cycle_steps < 1 or ramp_fraction outside (0, 1].
    """

    def __init__(self, cycle_steps: int, ramp_fraction: float = 0.5):
        self.cycle_steps = _check_steps("cycle_steps", cycle_steps)
        if isinstance(ramp_fraction, bool) or not isinstance(ramp_fraction, (int, float)) or not 0 < ramp_fraction <= 1:
            raise ValueError(f"Expected ramp_fraction in (0, 1]. Received: ramp_fraction={ramp_fraction!r}")
        self.ramp_fraction = float(ramp_fraction)

    def __call__(self, step):
        position = tf.math.floormod(tf.cast(step, tf.int64), self.cycle_steps)
        tau = tf.cast(position, tf.float32) / float(self.cycle_steps)
        return tf.minimum(1.0, tau / self.ramp_fraction)

    def get_config(self):
        return {"cycle_steps": self.cycle_steps, "ramp_fraction": self.ramp_fraction}


def get_kl_schedule(identifier) -> KLSchedule:
    """Returns a KLSchedule from None or "constant", an instance, or a serialized config.

    Raises:
        ValueError: anything else.
    """
    if identifier is None or identifier == "constant":
        return ConstantSchedule()
    if isinstance(identifier, KLSchedule):
        return identifier
    if isinstance(identifier, dict):
        resolved = keras.saving.deserialize_keras_object(identifier)
        if isinstance(resolved, KLSchedule):
            return resolved
    raise ValueError(
        "Expected kl_schedule to be None, 'constant' or a tfvae.schedules.KLSchedule such as "
        f"LinearWarmup(warmup_steps=1000). Received: kl_schedule={identifier!r}"
    )
