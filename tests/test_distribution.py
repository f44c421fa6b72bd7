"""Tests of distributed and deterministic training, each in fresh Python processes.

TensorFlow fixes its devices, its cluster and op determinism once per process, so every run
here starts its own interpreter. Mirrored training uses two logical CPU devices. Multi-worker
training runs two worker processes inside a private network namespace (`unshare -rn`).
TensorFlow's gRPC server listens on every interface (0.0.0.0) of its network namespace, and in a
private one the only interface is the loopback, so nothing outside can reach the workers.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import SMALL_PARAMS, make_dataset

from ferplus.dataset import save_dataset
from ferplus.models import load_trained_model

WORKER_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import tensorflow as tf

    data_dir, output_dir, params = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    if params["distribution"] == "mirrored":
        # Split the CPU into two logical devices before TensorFlow initializes it.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )

    from ferplus.dataset import load_dataset
    from ferplus.devices import configure_devices
    from ferplus.training import OutputPaths, TrainConfig, train_model

    config = TrainConfig.from_params(params)
    devices = configure_devices(
        config.distribution, config.mixed_precision, config.xla, config.deterministic, seed=5
    )
    outputs = OutputPaths(
        output_dir / "model.keras", output_dir / ".resume", output_dir / "dvclive"
    )
    result = train_model(
        config,
        5,
        load_dataset(data_dir / "train"),
        load_dataset(data_dir / "val"),
        devices,
        outputs,
    )
    print(json.dumps({"replicas": devices.replicas, "chief": devices.is_chief}))
    """
)

# Runs inside `unshare -rn`: brings the loopback interface up, picks two free ports on it and
# starts both workers, each bounded in time.
LAUNCHER_SCRIPT = textwrap.dedent(
    """
    import fcntl
    import json
    import os
    import socket
    import struct
    import subprocess
    import sys

    worker_script, data_dir, output_dir, params, log_dir = sys.argv[1:6]
    GET_FLAGS, SET_FLAGS, INTERFACE_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(control, GET_FLAGS, request))[1]
        fcntl.ioctl(control, SET_FLAGS, struct.pack("16sh", b"lo", flags | INTERFACE_UP))

    probes = [socket.socket() for _ in range(2)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]
    for probe in probes:
        probe.close()

    workers = []
    for index in range(2):
        task = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        environment = dict(os.environ, TF_CONFIG=json.dumps(task))
        log = open(os.path.join(log_dir, f"worker{index}.log"), "w")
        command = [sys.executable, worker_script, data_dir, output_dir, params]
        worker = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=log, text=True
        )
        workers.append(worker)
    results = []
    for worker in workers:
        try:
            output, _ = worker.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            output = "timed out"
        results.append({"returncode": worker.returncode, "output": output.strip()[-2000:]})
    print(json.dumps(results))
    """
)

TRAIN_PARAMS = SMALL_PARAMS | {
    "epochs": 3,
    "batch_size": 32,
    "horizontal_flip": False,
    "shift": 0.0,
    "rotation": 0.0,
    "zoom": 0.0,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    save_dataset(directory / "train", make_dataset(128))
    save_dataset(directory / "val", make_dataset(40, seed=1))
    return directory


def write_script(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def python_environment() -> dict:
    # Keeps TensorFlow's informational start-up lines out of the captured worker output.
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def last_json_line(output: str):
    return json.loads(output.strip().splitlines()[-1])


def train_losses(output_dir: Path) -> list[float]:
    path = output_dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    return pd.read_csv(path, sep="\t")["loss"].tolist()


def run_worker(tmp_path: Path, data_dir: Path, output_dir: Path, params: dict) -> dict:
    script = write_script(tmp_path, "worker.py", WORKER_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(data_dir), str(output_dir), json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=150,
        env=python_environment(),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return last_json_line(completed.stdout)


@pytest.mark.slow
def test_mirrored_two_cpu_devices(tmp_path, data_dir):
    output_dir = tmp_path / "outputs"

    result = run_worker(tmp_path, data_dir, output_dir, TRAIN_PARAMS | {"distribution": "mirrored"})
    losses = train_losses(output_dir)

    assert result == {"replicas": 2, "chief": True}
    assert load_trained_model(output_dir / "model.keras").output_shape == (None, 8)
    assert len(losses) == 3
    assert losses[-1] < losses[0]


def network_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_multi_worker_two_processes(tmp_path, data_dir):
    if not network_namespace_available():
        pytest.skip(
            "unshare -rn is unavailable: the workers' gRPC servers would listen on every "
            "interface, not only on 127.0.0.1"
        )
    worker = write_script(tmp_path, "worker.py", WORKER_SCRIPT)
    launcher = write_script(tmp_path, "launcher.py", LAUNCHER_SCRIPT)
    output_dir = tmp_path / "outputs"
    params = json.dumps(TRAIN_PARAMS | {"distribution": "multi_worker"})
    command = ["unshare", "-rn", sys.executable, str(launcher), str(worker), str(data_dir)]
    command += [str(output_dir), params, str(tmp_path)]

    # The launcher and both workers share one process group, killed as a whole on a timeout.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=python_environment(),
    )
    try:
        output, errors = process.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("multi-worker training timed out after 200 s")
    assert process.returncode == 0, errors[-3000:]
    results = last_json_line(output)
    worker_logs = [(tmp_path / f"worker{index}.log").read_text()[-3000:] for index in range(2)]
    losses = train_losses(output_dir)

    assert [result["returncode"] for result in results] == [0, 0], worker_logs
    assert [last_json_line(result["output"]) for result in results] == [
        {"replicas": 2, "chief": True},
        {"replicas": 2, "chief": False},
    ]
    assert load_trained_model(output_dir / "model.keras").output_shape == (None, 8)
    assert sorted(path.name for path in output_dir.iterdir()) == ["dvclive", "model.keras"]
    assert len(losses) == 3
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_deterministic_runs_identical(tmp_path, data_dir):
    params = TRAIN_PARAMS | {"epochs": 1, "deterministic": True, "horizontal_flip": True}

    run_worker(tmp_path, data_dir, tmp_path / "first", params)
    run_worker(tmp_path, data_dir, tmp_path / "second", params)
    first = load_trained_model(tmp_path / "first" / "model.keras").get_weights()
    second = load_trained_model(tmp_path / "second" / "model.keras").get_weights()

    assert len(first) == len(second)
    for first_weight, second_weight in zip(first, second, strict=True):
        assert np.array_equal(first_weight, second_weight)
