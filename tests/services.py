"""Real local services the tests start and stop: a GCS emulator and Beam's portable job
service with a separate SDK worker pool. All listen on loopback only."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Dict, Iterator, List

# google-auth must never probe the GCE metadata server from tests.
NO_CLOUD_ENV = {
    "NO_GCE_CHECK": "true",  # google-auth honours the lowercase value only
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s: {process.args}")


def venv_env(extra: Dict[str, str] = None) -> Dict[str, str]:
    """The environment with this interpreter's bin first on PATH: Beam's worker pool starts
    its SDK workers as a bare `python`."""
    env = dict(os.environ, **NO_CLOUD_ENV, **(extra or {}))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@contextlib.contextmanager
def running(commands: List[List[str]], ports: List[int], env=None) -> Iterator[None]:
    """Start each command, wait until its port listens, stop them all afterwards."""
    processes = []
    try:
        for command, port in zip(commands, ports):
            process = subprocess.Popen(command, env=env or venv_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            processes.append(process)
            wait_for_port(port, process)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def gcs_emulator(bucket: str, data_dir: str) -> Iterator[str]:
    """A gcp-storage-emulator with `bucket`; yields its STORAGE_EMULATOR_HOST."""
    port = free_port()
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    command = [emulator, "--data-dir", data_dir, "start", "--host", "127.0.0.1",
               "--port", str(port), "--default-bucket", bucket]
    with running([command], [port]):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def portable_services() -> Iterator[List[str]]:
    """Beam's Python job service and a separate SDK worker pool; yields the pipeline
    options that submit to them."""
    job_port, worker_port = free_port(), free_port()
    commands = [
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(job_port)],
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
         "--service_port", str(worker_port)],
    ]
    with running(commands, [job_port, worker_port]):
        yield [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{worker_port}",
        ]
