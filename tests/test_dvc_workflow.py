"""The DVC workflow on the real pipeline: repro, params, experiments, branches and remotes.

Every test works in a temporary git repository made by dvc_helpers.make_project: the project's
dvc.yaml, params.yaml, stages/ and src/, a synthetic raw dataset of 60 images and a params
profile that trains for one epoch. The module fixtures reproduce the pipeline once and run one
experiment, each in about 30 s on two CPU cores. Tests that change a repository work on a copy.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dvc_helpers import (
    COMMAND_TIMEOUT,
    DVC,
    QUICK_TIMEOUT,
    UP_TO_DATE,
    Project,
    S3Server,
    add_s3_remote,
    bucket_keys,
    cached_objects,
    command_env,
    file_digest,
    free_port,
    make_project,
    ran_stages,
    s3_client,
    set_s3_credentials,
    skipped_stages,
)

from ferplus.params import read_params_file

pytestmark = pytest.mark.slow

EXPERIMENT_BRANCH = "tiny-learning-rate"
TRAINING_CURVES = (
    "dvclive/plots/metrics/train/loss.tsv",
    "dvclive/plots/metrics/val/accuracy.tsv",
    "dvclive/plots/metrics/learning_rate.tsv",
)
CONFUSION_PLOTS = ("metrics/confusion_test.csv", "confusion_test_normalized")


@dataclass
class Reproduced:
    """A repository after its first `dvc repro`, committed on branch main."""

    project: Project
    root: Path  # the folder that contains the repository, its copies and the local remote
    output: str
    hashes: dict[str, str]
    lock: dict
    evaluate_metrics: dict


@dataclass
class Experiment:
    """A copy of the reproduced repository after one `dvc exp run`, turned into a branch."""

    project: Project
    name: str
    output: str
    params_text: str
    hashes: dict[str, str]
    lock: dict
    evaluate_metrics: dict
    exp_show: list  # the output of `dvc exp show --json`


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Reproduced:
    root = tmp_path_factory.mktemp("pipeline")
    project = make_project(root / "project", root / "site-cache")
    result = project.repro()
    project.commit("Run the pipeline")
    return Reproduced(
        project,
        root,
        result.stdout,
        project.output_hashes(),
        project.lock(),
        read_evaluate_metrics(project),
    )


@pytest.fixture(scope="module")
def experiment(reproduced) -> Experiment:
    project = reproduced.project.copy(reproduced.root / "experiment")
    result = project.dvc(
        "exp",
        "run",
        "-S",
        "train.epochs=2",
        "-S",
        "train.learning_rate=0.000001",
        timeout=COMMAND_TIMEOUT,
    )
    name = re.search(r"Ran experiment\(s\): ([\w-]+)", result.stdout).group(1)
    exp_show = json.loads(project.dvc("exp", "show", "--json").stdout)
    project.dvc("exp", "branch", name, EXPERIMENT_BRANCH)
    return Experiment(
        project,
        name,
        result.stdout,
        (project.path / "params.yaml").read_text(),
        project.output_hashes(),
        project.lock(),
        read_evaluate_metrics(project),
        exp_show,
    )


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def read_evaluate_metrics(project: Project) -> dict:
    return json.loads((project.path / "metrics" / "evaluate.json").read_text())


def without(hashes: dict[str, str], outputs: list[str]) -> dict[str, str]:
    """Return `hashes` without the files at or under the paths in `outputs`."""
    return {
        path: digest
        for path, digest in hashes.items()
        if not any(path == output or path.startswith(output + "/") for output in outputs)
    }


def locked_param(lock: dict, stage: str, key: str):
    """Return a params value that dvc.lock records for a stage, listed by key or by section."""
    recorded = lock[stage]["params"]["params.yaml"]
    if key in recorded:
        return recorded[key]
    section, name = key.split(".", 1)
    return recorded[section][name]


def copy_raw_data(source: Project, destination: Project) -> None:
    """Copy the raw data, which is in neither git nor DVC's cache, between repositories."""
    shutil.copytree(source.path / "data" / "raw", destination.path / "data" / "raw")


def assert_same_files(expected: dict[str, str], actual: dict[str, str]) -> None:
    assert sorted(actual) == sorted(expected)
    changed = [path for path in expected if actual[path] != expected[path]]
    assert changed == []


# --- dvc repro -------------------------------------------------------------------------------


def test_repro_first_runs_every_stage(reproduced):
    assert sorted(ran_stages(reproduced.output)) == sorted(reproduced.project.stages())


def test_repro_again_does_nothing(reproduced):
    result = reproduced.project.repro()

    assert UP_TO_DATE in result.stdout
    assert ran_stages(result.stdout) == []
    assert sorted(skipped_stages(result.stdout)) == sorted(reproduced.project.stages())
    assert_same_files(reproduced.hashes, reproduced.project.output_hashes())
    assert reproduced.project.git("status", "--porcelain") == ""


def test_evaluate_param_reruns_evaluate_only(reproduced):
    project = reproduced.project.copy(reproduced.root / "evaluate-param")
    project.set_params({"evaluate": {"mistakes_rows": 3}})

    result = project.repro()

    assert ran_stages(result.stdout) == ["evaluate"]
    lock = project.lock()
    assert locked_param(lock, "evaluate", "evaluate.mistakes_rows") == 3
    for stage in set(reproduced.lock) - {"evaluate"}:
        assert lock[stage] == reproduced.lock[stage], stage
    evaluate_outputs = project.stage_output_paths("evaluate")
    assert_same_files(
        without(reproduced.hashes, evaluate_outputs),
        without(project.output_hashes(), evaluate_outputs),
    )


# --- dvc exp run, exp show, exp apply ----------------------------------------------------------


def test_train_param_skips_ingest_and_split(experiment, reproduced):
    assert "ingest" in skipped_stages(experiment.output)
    assert "split" in skipped_stages(experiment.output)
    assert sorted(ran_stages(experiment.output)) == ["evaluate", "export", "train"]
    assert experiment.lock["ingest"] == reproduced.lock["ingest"]
    assert experiment.lock["split"] == reproduced.lock["split"]


def test_experiment_small_float_stays_float(experiment, tmp_path):
    learning_rate_lines = [
        line for line in experiment.params_text.splitlines() if "learning_rate:" in line
    ]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(experiment.params_text)

    assert learning_rate_lines[0].split("#")[0].strip() == "learning_rate: 1e-06"
    learning_rate = read_params_file(params_file)["train"]["learning_rate"]
    assert isinstance(learning_rate, float)
    assert learning_rate == 1e-06
    assert locked_param(experiment.lock, "train", "train.learning_rate") == 1e-06


def test_experiment_stage_reads_small_float(experiment):
    epoch_lines = [line for line in experiment.output.splitlines() if " INFO epoch " in line]

    assert len(epoch_lines) == 2
    assert all("learning rate 1e-06," in line for line in epoch_lines)


def test_exp_show_lists_metrics(experiment, reproduced):
    baseline = next(entry for entry in experiment.exp_show if entry["name"] == "main")
    runs = [run for group in baseline["experiments"] for run in group["revs"]]
    run = next(run for run in runs if run["name"] == experiment.name)

    assert run["data"]["metrics"]["metrics/evaluate.json"]["data"] == experiment.evaluate_metrics
    assert baseline["data"]["metrics"]["metrics/evaluate.json"]["data"] == (
        reproduced.evaluate_metrics
    )
    train_params = run["data"]["params"]["params.yaml"]["data"]["train"]
    assert train_params["epochs"] == 2
    assert train_params["learning_rate"] == 1e-06
    assert run["data"]["metrics"]["dvclive/metrics.json"]["data"]["step"] == 1


def test_exp_apply_restores_run(experiment, reproduced):
    project = experiment.project
    project.git("checkout", "--", ".")
    project.dvc("checkout", "--force")
    assert_same_files(reproduced.hashes, project.output_hashes())

    project.dvc("exp", "apply", experiment.name)

    params = read_params_file(project.path / "params.yaml")["train"]
    assert params["epochs"] == 2
    assert params["learning_rate"] == 1e-06
    assert_same_files(experiment.hashes, project.output_hashes())


def queue_states(project: Project) -> dict[str, str]:
    """Return {experiment name: state} from `dvc queue status`."""
    lines = project.dvc("queue", "status").stdout.splitlines()
    rows = [line.split() for line in lines[1:] if line.strip() and not line.startswith("Worker")]
    return {row[1]: row[-1] for row in rows}


def test_queue_runs_experiments_in_parallel(reproduced):
    project = reproduced.project.copy(reproduced.root / "queue")
    # A queued experiment runs in a temporary copy of the last commit. That copy lacks the raw
    # data, which neither git nor DVC tracks, so --allow-missing must skip ingest.
    project.dvc("exp", "run", "--queue", "-n", "raw-data-needed", "-S", "train.epochs=2")
    project.dvc(
        "exp",
        "run",
        "--queue",
        "--allow-missing",
        "-n",
        "small-rate",
        "-S",
        "train.learning_rate=0.0001",
    )
    try:
        started = project.dvc("queue", "start", "--jobs", "2")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        states = queue_states(project)
        while {"Queued", "Running"} & set(states.values()):
            assert time.monotonic() < deadline, f"queue still busy: {states}"
            time.sleep(2)
            states = queue_states(project)
    finally:
        project.dvc("queue", "stop", "--kill", check=False)
    failed_log = project.dvc("queue", "logs", "raw-data-needed").stdout
    exp_show = json.loads(project.dvc("exp", "show", "--json").stdout)
    runs = {
        run["name"]: run["data"]
        for entry in exp_show
        for group in entry.get("experiments") or []
        for run in group["revs"]
    }

    assert "Started '2' new experiments task queue workers." in started.stdout
    assert states == {"raw-data-needed": "Failed", "small-rate": "Success"}
    assert "ERROR: failed to reproduce 'ingest'" in failed_log
    assert "/.dvc/tmp/exps/" in failed_log
    assert "data/raw" in failed_log
    small_rate = runs["small-rate"]
    assert small_rate["params"]["params.yaml"]["data"]["train"]["learning_rate"] == 0.0001
    assert "test" in small_rate["metrics"]["metrics/evaluate.json"]["data"]


# --- metrics diff and plots diff across branches ------------------------------------------------


def test_metrics_diff_branches(experiment, reproduced):
    result = experiment.project.dvc("metrics", "diff", "main", EXPERIMENT_BRANCH, "--json")
    diff = json.loads(result.stdout)

    assert diff["dvclive/metrics.json"]["step"] == {"old": 0, "new": 1, "diff": 1}
    learning_rate = diff["dvclive/metrics.json"]["learning_rate"]
    assert learning_rate["old"] == pytest.approx(0.001)
    assert learning_rate["new"] == pytest.approx(1e-06)
    cross_entropy = diff["metrics/evaluate.json"]["test.cross_entropy"]
    assert cross_entropy["old"] == reproduced.evaluate_metrics["test"]["cross_entropy"]
    assert cross_entropy["new"] == experiment.evaluate_metrics["test"]["cross_entropy"]
    assert cross_entropy["diff"] == pytest.approx(cross_entropy["new"] - cross_entropy["old"])


def test_plots_diff_branches_json(experiment, reproduced, tmp_path):
    rendered = tmp_path / "plots"
    result = experiment.project.dvc(
        "plots", "diff", "main", EXPERIMENT_BRANCH, "--json", "--out", str(rendered)
    )
    plots = json.loads(result.stdout)["data"]

    for name in TRAINING_CURVES + CONFUSION_PLOTS:
        assert [plot["revisions"] for plot in plots[name]] == [["main", EXPERIMENT_BRANCH]], name
    images = {
        plot["revisions"][0]: Path(plot["url"]) for plot in plots["metrics/confusion_test.png"]
    }
    assert sorted(images) == ["main", EXPERIMENT_BRANCH]
    committed = {
        "main": reproduced.hashes["metrics/confusion_test.png"],
        EXPERIMENT_BRANCH: experiment.hashes["metrics/confusion_test.png"],
    }
    for revision, image in images.items():
        assert file_digest(image) == committed[revision], revision


def test_plots_diff_branches_html(experiment, tmp_path):
    rendered = tmp_path / "plots"

    experiment.project.dvc("plots", "diff", "main", EXPERIMENT_BRANCH, "--out", str(rendered))

    page = (rendered / "index.html").read_text()
    assert "dvclive/plots/metrics/train/loss.tsv" in page
    assert "confusion_test_normalized" in page
    assert f'"rev": "{EXPERIMENT_BRANCH}"' in page
    assert (rendered / "static" / f"{EXPERIMENT_BRANCH}_metrics_confusion_test.png").is_file()


# --- invalid params ------------------------------------------------------------------------------

INVALID_PARAMS = {
    # dvc.yaml lists each stage's whole section, so an unknown key alone reruns its stage.
    "unknown key": (
        "train",
        {"epoch": 2},
        "params.yaml: unknown key train.epoch; the keys of train are model, epochs",
    ),
    "wrong type": (
        "evaluate",
        {"batch_size": "large"},
        "params.yaml: evaluate.batch_size is 'large', expected an integer >= 1",
    ),
    "out of range": (
        "split",
        {"val_fraction": 1.5},
        "params.yaml: split.val_fraction is 1.5, expected a number > 0.0 and <= 1.0",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_PARAMS))
def test_invalid_params_fail_and_recover(reproduced, case):
    stage, values, message = INVALID_PARAMS[case]
    project = reproduced.project.copy(reproduced.root / f"invalid-{case.replace(' ', '-')}")
    project.set_params({stage: values})

    failed = project.repro(check=False)

    assert failed.returncode != 0
    assert message in failed.stdout
    assert f"ERROR: failed to reproduce '{stage}'" in failed.stdout
    assert ran_stages(failed.stdout) == [stage]
    # Every stage logs its steps at INFO, so no INFO line means it stopped before its first step.
    assert " INFO " not in failed.stdout
    assert project.lock() == reproduced.lock
    stage_outputs = project.stage_output_paths(stage)
    assert_same_files(
        without(reproduced.hashes, stage_outputs), without(project.output_hashes(), stage_outputs)
    )

    # DVC deleted the stage's outputs before it ran the command. `dvc checkout` restores the
    # cached ones, and the repro restores evaluate's uncached ones from DVC's run cache. A repro
    # without the checkout would retrain, because train's persistent outputs keep it out of the
    # run cache.
    project.git("checkout", "--", "params.yaml")
    project.dvc("checkout")
    recovered = project.repro()

    assert ran_stages(recovered.stdout) == []
    assert_same_files(reproduced.hashes, project.output_hashes())
    assert project.git("status", "--porcelain") == ""


def test_renamed_param_rejected_by_stage(reproduced):
    project = reproduced.project.copy(reproduced.root / "renamed-param")
    params = project.read_params()
    params["evaluate"]["mistakes_row"] = params["evaluate"].pop("mistakes_rows")
    project.write_params(params)

    result = project.repro(check=False)

    assert result.returncode != 0
    assert "params.yaml: unknown key evaluate.mistakes_row" in result.stdout
    assert ran_stages(result.stdout) == ["evaluate"]
    assert project.lock() == reproduced.lock


# --- remotes -------------------------------------------------------------------------------------


def test_local_remote_clone_pulls_identical(reproduced):
    reproduced.project.dvc("push", timeout=COMMAND_TIMEOUT)
    clone = reproduced.project.clone(reproduced.root / "clone-local")

    clone.dvc("pull", timeout=COMMAND_TIMEOUT)

    assert_same_files(reproduced.hashes, clone.output_hashes())


def test_local_remote_clone_reruns_nothing(reproduced):
    reproduced.project.dvc("push", timeout=COMMAND_TIMEOUT)
    clone = reproduced.project.clone(reproduced.root / "clone-rerun")
    clone.dvc("pull", timeout=COMMAND_TIMEOUT)

    # The raw data is in neither git nor the remote: without it, --allow-missing skips ingest.
    missing_raw = clone.repro("--allow-missing")
    copy_raw_data(reproduced.project, clone)
    status = clone.dvc("status")
    repro = clone.repro()

    assert ran_stages(missing_raw.stdout) == []
    assert UP_TO_DATE in status.stdout
    assert ran_stages(repro.stdout) == []
    assert UP_TO_DATE in repro.stdout
    assert_same_files(reproduced.hashes, clone.output_hashes())


def s3_project(reproduced, s3_server, name: str) -> tuple[Project, object, str]:
    """Copy the repository with a committed S3 remote `s3remote` on a new bucket `name`."""
    client = s3_client(s3_server)
    client.create_bucket(Bucket=name)
    project = reproduced.project.copy(reproduced.root / name)
    add_s3_remote(project, "s3remote", f"s3://{name}/ferplus", s3_server.endpoint_url)
    project.commit("Add an S3 remote")
    return project, client, name


def assert_bucket_matches_cache(project: Project, client, bucket: str) -> None:
    keys = bucket_keys(client, bucket)
    expected = {f"ferplus/files/md5/{name}" for name in cached_objects(project)}
    assert keys == expected
    cache = project.path / ".dvc" / "cache" / "files" / "md5"
    for key in sorted(keys):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == (cache / key.removeprefix("ferplus/files/md5/")).read_bytes(), key


def pull_s3_clone(project: Project, destination: Path) -> Project:
    clone = project.clone(destination)
    set_s3_credentials(clone, "s3remote")
    clone.dvc("pull", "--remote", "s3remote", timeout=COMMAND_TIMEOUT)
    return clone


def test_s3_remote_clone_pulls_identical(reproduced, s3_server):
    project, client, bucket = s3_project(reproduced, s3_server, "s3-complete")

    project.dvc("push", "--remote", "s3remote", timeout=COMMAND_TIMEOUT)
    clone = pull_s3_clone(project, reproduced.root / "clone-s3-complete")

    assert_bucket_matches_cache(project, client, bucket)
    assert_same_files(reproduced.hashes, clone.output_hashes())


def test_s3_interrupted_push_completes(reproduced, s3_server):
    project, client, bucket = s3_project(reproduced, s3_server, "s3-interrupted")
    uploads_before_hold = 3
    s3_server.hold_uploads_after(uploads_before_hold)
    push = subprocess.Popen(
        [DVC, "push", "--remote", "s3remote", "--jobs", "1"],
        cwd=project.path,
        env=command_env(project.path, project.site_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + QUICK_TIMEOUT
        while not s3_server.upload_held.wait(timeout=0.2):
            assert push.poll() is None, f"push ended uninterrupted: {push.stdout.read()}"
            assert time.monotonic() < deadline, "push reached no held upload in time"
        os.killpg(push.pid, signal.SIGKILL)
        push.wait(timeout=QUICK_TIMEOUT)
    finally:
        if push.poll() is None:
            os.killpg(push.pid, signal.SIGKILL)
            push.wait(timeout=QUICK_TIMEOUT)
        push.stdout.close()
        s3_server.resume_uploads()
    keys_after_kill = bucket_keys(client, bucket)

    result = project.dvc("push", "--remote", "s3remote", timeout=COMMAND_TIMEOUT)
    clone = pull_s3_clone(project, reproduced.root / "clone-s3-interrupted")

    assert push.returncode == -signal.SIGKILL
    assert len(keys_after_kill) == uploads_before_hold
    total = len(cached_objects(project))
    assert f"{total - uploads_before_hold} files pushed" in result.stdout
    assert_bucket_matches_cache(project, client, bucket)
    assert_same_files(reproduced.hashes, clone.output_hashes())


def test_s3_unreachable_remote_fails(reproduced):
    project = reproduced.project.copy(reproduced.root / "s3-unreachable")
    port = free_port()
    add_s3_remote(project, "unreachable", "s3://missing/ferplus", f"http://127.0.0.1:{port}")

    result = project.dvc("push", "--remote", "unreachable", timeout=COMMAND_TIMEOUT, check=False)

    assert result.returncode != 0
    assert f'Could not connect to the endpoint URL: "http://127.0.0.1:{port}/' in result.stdout
