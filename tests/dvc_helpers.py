"""Helpers for tests and benchmarks that run the real DVC pipeline in a temporary git repository.

`make_project` copies the pipeline (dvc.yaml, params.yaml, stages/, src/) into a new git
repository, writes a small synthetic raw dataset and a params profile that trains for one epoch,
and commits. Every command runs as a subprocess with a timeout. The virtual environment's bin
folder comes first on PATH, so `python` in dvc.yaml is this environment's Python. PYTHONPATH is
the copy's src/, so the stages import the copied package rather than the editable install.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from conftest import write_folder_layout
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from ruamel.yaml import YAML
from werkzeug.serving import make_server

from ferplus import EMOTIONS, USAGES, VOTE_COLUMNS

REPOSITORY = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DVC = str(VENV_BIN / "dvc")

PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")
PROJECT_FOLDERS = ("stages", "src")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info")

COMMAND_TIMEOUT = 600  # seconds; a whole-pipeline repro with TINY_PROFILE takes about 30 s
QUICK_TIMEOUT = 120  # seconds; git commands and DVC commands that run no stage

# The default remote proposed for the project: a folder beside the repository, so that clones
# in the same parent folder share it. DVC stores the URL relative to .dvc/config.
LOCAL_REMOTE = "storage"
LOCAL_REMOTE_URL = "../ferplus-dvc-storage"

# Fake credentials for moto's S3 server, which accepts any.
S3_KEY_ID = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"

IMAGES_PER_USAGE = {"Training": 36, "PublicTest": 12, "PrivateTest": 12}
"""The synthetic raw dataset: 60 images, every emotion in every Usage at least once."""

TINY_PROFILE = {
    "train": {
        "model": "compact_cnn",
        "epochs": 1,
        "batch_size": 8,
        "optimizer": "adam",
        "learning_rate": 0.001,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0,
        "distribution": "auto",
        "mixed_precision": "off",
        "xla": "off",
    },
    "evaluate": {"batch_size": 16, "mistakes_rows": 2, "mistakes_columns": 3},
}
"""params.yaml values that make the whole pipeline run in about 30 s on two CPU cores."""

RAN = re.compile(r"Running stage '([\w-]+)'")
SKIPPED = re.compile(r"Stage '([\w-]+)' didn't change, skipping")
UP_TO_DATE = "Data and pipelines are up to date."


def raw_rows() -> list[tuple[str, str, list[int]]]:
    """Return (Usage, image name, 10 votes) rows: 7 votes for one emotion and 3 for the next."""
    rows = []
    number = 0
    for usage in USAGES:
        for position in range(IMAGES_PER_USAGE[usage]):
            votes = [0] * len(VOTE_COLUMNS)
            votes[position % len(EMOTIONS)] = 7
            votes[(position + 1) % len(EMOTIONS)] = 3
            rows.append((usage, f"fer{number:07d}.png", votes))
            number += 1
    return rows


def file_digest(path: Path) -> str:
    """Return the SHA-256 of a file's bytes, in hexadecimal."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command_env(repository: Path, site_cache: Path) -> dict[str, str]:
    """Return the environment for git and DVC subprocesses working in `repository`."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repository / "src")
    env["DVC_NO_ANALYTICS"] = "1"
    # DVC keeps per-repository state under the site cache folder (/var/tmp/dvc by default).
    env["DVC_SITE_CACHE_DIR"] = str(site_cache)
    env["DVC_GLOBAL_CONFIG_DIR"] = str(site_cache / "global-config")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "FER+ tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@example.com"
    # Keep boto3 away from the machine's AWS settings and from the EC2 metadata address.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    empty_aws_config = site_cache / "aws-config"
    if not empty_aws_config.is_file():
        empty_aws_config.parent.mkdir(parents=True, exist_ok=True)
        empty_aws_config.write_text("")
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(empty_aws_config)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    return env


class Project:
    """A git + DVC repository on disk, with helpers that run commands in it."""

    def __init__(self, path: Path, site_cache: Path):
        self.path = path
        self.site_cache = site_cache

    def run(
        self, *command: str, timeout: float = QUICK_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run a command in the repository; stdout and stderr together in `.stdout`."""
        result = subprocess.run(
            command,
            cwd=self.path,
            env=command_env(self.path, self.site_cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited with {result.returncode} in {self.path}:\n"
                f"{result.stdout}"
            )
        return result

    def dvc(self, *arguments: str, timeout: float = QUICK_TIMEOUT, check: bool = True):
        """Run the virtual environment's dvc with `arguments`."""
        return self.run(DVC, *arguments, timeout=timeout, check=check)

    def repro(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `dvc repro`, which may train, with the long timeout."""
        return self.dvc("repro", *arguments, timeout=COMMAND_TIMEOUT, check=check)

    def git(self, *arguments: str) -> str:
        """Run git and return its output."""
        return self.run("git", *arguments).stdout

    def commit(self, message: str) -> None:
        """Commit every change that git does not ignore."""
        self.git("add", "-A")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)

    def read_params(self) -> dict:
        """Return params.yaml as parsed by a YAML 1.2 reader that keeps comments and order."""
        return YAML().load((self.path / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        """Write params.yaml from what read_params returned."""
        with (self.path / "params.yaml").open("w") as stream:
            YAML().dump(params, stream)

    def set_params(self, values: dict[str, dict]) -> None:
        """Set params.yaml keys, {section: {key: value}}, keeping its comments."""
        params = self.read_params()
        for section, keys in values.items():
            params[section].update(keys)
        self.write_params(params)

    def lock(self) -> dict:
        """Return dvc.lock's stages."""
        return YAML(typ="safe", pure=True).load((self.path / "dvc.lock").read_text())["stages"]

    def stage_definitions(self) -> dict:
        """Return dvc.yaml's stages."""
        return YAML(typ="safe", pure=True).load((self.path / "dvc.yaml").read_text())["stages"]

    def stages(self) -> list[str]:
        """Return the stage names of dvc.yaml, in file order."""
        return list(self.stage_definitions())

    def stage_output_paths(self, stage: str) -> list[str]:
        """Return the outs, metrics and plots paths of one stage of dvc.yaml."""
        definition = self.stage_definitions()[stage]
        return [
            entry if isinstance(entry, str) else next(iter(entry))
            for field in ("outs", "metrics", "plots")
            for entry in definition.get(field, [])
        ]

    def output_paths(self) -> list[str]:
        """Return the outs, metrics and plots paths of every stage of dvc.yaml."""
        return [path for stage in self.stages() for path in self.stage_output_paths(stage)]

    def output_hashes(self) -> dict[str, str]:
        """Return the SHA-256 of every file under the pipeline's outputs, by relative path."""
        hashes = {}
        for output in self.output_paths():
            path = self.path / output
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for file in files:
                if file.is_file():
                    hashes[file.relative_to(self.path).as_posix()] = file_digest(file)
        return hashes

    def copy(self, destination: Path) -> "Project":
        """Copy the repository, DVC cache included, to `destination`."""
        shutil.copytree(self.path, destination, symlinks=True)
        return Project(destination, self.site_cache)

    def clone(self, destination: Path) -> "Project":
        """Return a `git clone` of this repository, without the raw data or DVC's cache."""
        self.run("git", "clone", "--quiet", str(self.path), str(destination))
        return Project(destination, self.site_cache)


def ran_stages(output: str) -> list[str]:
    """Return the stages that `dvc repro` or `dvc exp run` reports as run, in order."""
    return RAN.findall(output)


def skipped_stages(output: str) -> list[str]:
    """Return the stages that the output reports as unchanged and skipped."""
    return SKIPPED.findall(output)


def make_project(path: Path, site_cache: Path, rows: list | None = None) -> Project:
    """Create a committed git + DVC repository with the pipeline, raw data and TINY_PROFILE.

    The raw data in data/raw (ignored by git) is `rows` in the FER+ folder layout, raw_rows()
    by default.
    """
    path.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPOSITORY / name, path / name)
    for name in PROJECT_FOLDERS:
        shutil.copytree(REPOSITORY / name, path / name, ignore=COPY_IGNORE)
    project = Project(path, site_cache)
    project.git("init", "--quiet", "--initial-branch=main")
    project.dvc("init", "--quiet")
    project_config = REPOSITORY / ".dvc" / "config"
    if project_config.is_file():
        shutil.copy2(project_config, path / ".dvc" / "config")
    project.dvc("config", "core.analytics", "false")
    project.dvc("config", "core.check_update", "false")
    project.dvc("remote", "add", "--default", "--force", LOCAL_REMOTE, LOCAL_REMOTE_URL)
    project.set_params(TINY_PROFILE)
    write_folder_layout(path / "data" / "raw", raw_rows() if rows is None else rows)
    project.commit("Set up the FER+ pipeline")
    return project


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietRequestHandler(MotoRequestHandler):
    """moto's request handler without a log line per request."""

    def log_request(self, code="-", size="-"):
        pass


class S3Server:
    """moto's S3 server on 127.0.0.1 at a free port, served by a thread of this process.

    `hold_uploads_after(count)` lets the next `count` object uploads through and leaves every
    later one unanswered until `resume_uploads()`, like a server that stops answering part-way
    through a push. Those requests never reach moto, and they get status 503 once resumed.
    """

    def __init__(self):
        self.application = DomainDispatcherApplication(create_backend_app)
        self.server = make_server(
            "127.0.0.1", 0, self._handle, threaded=True, request_handler=QuietRequestHandler
        )
        self.port = self.server.server_port
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.lock = threading.Lock()
        self.uploads_allowed: int | None = None
        self.upload_held = threading.Event()
        self.uploads_resumed = threading.Event()

    def start(self) -> "S3Server":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.resume_uploads()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)

    def hold_uploads_after(self, count: int) -> None:
        with self.lock:
            self.uploads_allowed = count
            self.upload_held.clear()
            self.uploads_resumed.clear()

    def resume_uploads(self) -> None:
        with self.lock:
            self.uploads_allowed = None
        self.uploads_resumed.set()

    def _handle(self, environ, start_response):
        is_object_upload = environ["REQUEST_METHOD"] == "PUT" and "/" in environ.get(
            "PATH_INFO", ""
        ).strip("/")
        hold = False
        if is_object_upload:
            with self.lock:
                if self.uploads_allowed is not None:
                    hold = self.uploads_allowed == 0
                    self.uploads_allowed = max(self.uploads_allowed - 1, 0)
        if not hold:
            return self.application(environ, start_response)
        self.upload_held.set()
        self.uploads_resumed.wait(timeout=COMMAND_TIMEOUT)
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"upload held by the test server"]


def s3_client(server: S3Server):
    """Return a boto3 S3 client for `server`."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
    )


def bucket_keys(client, bucket: str) -> set[str]:
    """Return every object key in `bucket`."""
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def add_s3_remote(project: Project, name: str, url: str, endpoint_url: str) -> None:
    """Add an S3 remote with a custom endpoint, with the credentials in .dvc/config.local."""
    project.dvc("remote", "add", name, url)
    project.dvc("remote", "modify", name, "endpointurl", endpoint_url)
    project.dvc("remote", "modify", name, "region", S3_REGION)
    set_s3_credentials(project, name)


def set_s3_credentials(project: Project, name: str) -> None:
    """Store the fake S3 credentials in the repository's .dvc/config.local, never in git."""
    project.dvc("remote", "modify", "--local", name, "access_key_id", S3_KEY_ID)
    project.dvc("remote", "modify", "--local", name, "secret_access_key", S3_SECRET_KEY)


def cached_objects(project: Project) -> set[str]:
    """Return the cache objects that dvc.lock's cached outputs need, as "xx/yyyy[.dir]" paths.

    Outputs with `cache: false` are left out: git tracks them, so `dvc push` sends none of them.
    """
    cache = project.path / ".dvc" / "cache" / "files" / "md5"
    uncached = set()
    for stage in project.stages():
        for field in ("outs", "metrics", "plots"):
            for entry in project.stage_definitions()[stage].get(field, []):
                if isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False:
                    uncached.add(next(iter(entry)))
    objects = set()
    for stage in project.lock().values():
        for output in stage.get("outs", []):
            if output["path"] in uncached:
                continue
            digest = output["md5"]
            objects.add(f"{digest[:2]}/{digest[2:]}")
            if digest.endswith(".dir"):
                entries = json.loads((cache / digest[:2] / digest[2:]).read_text())
                objects.update(f"{entry['md5'][:2]}/{entry['md5'][2:]}" for entry in entries)
    return objects
