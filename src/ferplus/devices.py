"""Device set-up for training: GPU memory growth, distribution strategy, mixed precision, XLA.

`configure_devices` must run before anything else touches TensorFlow devices: GPU memory growth
can only be set before a GPU is initialized, and MultiWorkerMirroredStrategy must be created at
program start. A machine without a GPU runs the same code with the default strategy.
"""

import json
import logging
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from ferplus.params import check_choice

DISTRIBUTIONS = ("auto", "mirrored", "multi_worker")
SWITCHES = ("auto", "on", "off")

logger = logging.getLogger(__name__)


@dataclass
class DeviceSetup:
    """The strategy that training runs under and the choices that go with it."""

    strategy: tf.distribute.Strategy
    is_chief: bool  # whether this process writes the outputs (always true on one machine)
    mixed_precision_policy: str  # the Keras dtype policy name, "float32" when off
    xla: bool  # whether train steps are compiled with XLA
    multi_worker: bool  # whether the strategy spans several processes (MultiWorkerMirroredStrategy)

    @property
    def replicas(self) -> int:
        """The number of model copies that share each global batch."""
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        """Return a one-line summary for the log."""
        return (
            f"{type(self.strategy).__name__} with {self.replicas} replica(s), "
            f"{'chief' if self.is_chief else 'non-chief worker'}, "
            f"dtype policy {self.mixed_precision_policy}, XLA {'on' if self.xla else 'off'}"
        )


def is_chief_task(task_type: str | None, task_id: int | None, has_chief_job: bool) -> bool:
    """Return whether a task is the chief: the 'chief' task, or worker 0 when there is none."""
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and not has_chief_job


def resolve_switch(name: str, value: str, gpu_present: bool) -> bool:
    """Turn an auto/on/off setting into a bool: auto is on exactly when a GPU is present."""
    check_choice(name, value, SWITCHES)
    if value == "auto":
        return gpu_present
    return value == "on"


def _enable_memory_growth(gpus: list) -> None:
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:
            # Raised when the GPU was initialized earlier in this process, e.g. by a test.
            logger.warning("could not enable memory growth on %s: %s", gpu.name, error)


def _make_strategy(distribution: str, gpus: list) -> tf.distribute.Strategy:
    if distribution == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "distribution 'multi_worker' needs the TF_CONFIG environment variable "
                "(the cluster and this worker's task); set it on every worker"
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid TF_CONFIG environment variable: {error}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if distribution == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        # Without a GPU, mirror over every logical CPU device (one unless configured).
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def configure_devices(
    distribution: str, mixed_precision: str, xla: str, deterministic: bool, seed: int
) -> DeviceSetup:
    """Set up devices, precision and random seeds for training; call before building a model.

    Seeds Python, NumPy and TensorFlow with `seed`, and with `deterministic` makes every
    TensorFlow operation deterministic (slower on a GPU).
    """
    check_choice("distribution", distribution, DISTRIBUTIONS)
    gpus = tf.config.list_physical_devices("GPU")
    _enable_memory_growth(gpus)
    strategy = _make_strategy(distribution, gpus)

    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    is_chief = True
    if multi_worker:
        resolver = strategy.cluster_resolver
        is_chief = is_chief_task(
            resolver.task_type, resolver.task_id, "chief" in resolver.cluster_spec().jobs
        )

    use_xla = resolve_switch("xla", xla, bool(gpus))
    if use_xla and multi_worker:
        # The multi-worker loop runs Strategy.run in a tf.function, which XLA cannot compile.
        logger.warning("xla is ignored with distribution 'multi_worker'")
        use_xla = False

    if resolve_switch("mixed_precision", mixed_precision, bool(gpus)):
        # float16 needs loss scaling, which Keras adds when compiling; CPUs compute in bfloat16.
        policy = "mixed_float16" if gpus else "mixed_bfloat16"
    else:
        policy = "float32"
    keras.mixed_precision.set_global_policy(policy)

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)

    return DeviceSetup(
        strategy=strategy,
        is_chief=is_chief,
        mixed_precision_policy=policy,
        xla=use_xla,
        multi_worker=multi_worker,
    )
