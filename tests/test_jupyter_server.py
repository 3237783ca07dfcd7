"""A real JupyterLab server from .venv runs the course: it lists the course kernel, starts it, and a cell
run through the kernel's websocket starts a notebook in the profile the server was started with.

The kernel is registered in a temporary folder on JUPYTER_PATH, so the test does not depend on
`make lab` having run; runtime files and settings stay in temporary folders too.
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from utils.apps.kernel import KERNEL_DISPLAY_NAME, KERNEL_NAME, install_course_kernel

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
JUPYTER = Path(sys.executable).parent / "jupyter"
START_SECONDS = 20  # the server: about 3 s on a busy 2-core machine
CELL_SECONDS = 25  # the kernel's start and the cell, which imports torch and transformers: about 8 s there
START_CELL = 'from utils import course\nrun = course.start("01_prompting")\nprint("profile:", run.profile.name)'


def make_lab_options() -> list[str]:
    """The options `make lab` gives `jupyter lab` (read from `make -n`, which runs nothing)."""
    printed = subprocess.run(["make", "-s", "-n", "lab", "LAB_ARGS="], cwd=ROOT, capture_output=True, text=True,
                             timeout=30, check=True).stdout
    command = next(line for line in printed.splitlines() if "/bin/jupyter lab " in line)
    return [word for word in command.split() if word.startswith("--")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `jupyter lab` process on 127.0.0.1 and the token to talk to it."""

    def __init__(self, process: subprocess.Popen, port: int, token: str, log: Path):
        self.process, self.port, self.token, self.log = process, port, token, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, self.url + path, headers={"Authorization": f"token {self.token}"},
                                    timeout=10, **kwargs)
        response.raise_for_status()
        return response

    def wait_until_ready(self, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"jupyter lab exited:\n{self.log.read_text()[-3000:]}"
            try:
                return self.api("GET", "/api/status").json()
            except requests.RequestException:
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer /api/status within {seconds} s")

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels), and end the process if it does not."""
        try:
            self.api("POST", "/api/shutdown")
        except requests.RequestException:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """JupyterLab on notebooks/, started with COURSE_PROFILE=tiny as `COURSE_PROFILE=tiny make lab` would."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    install_course_kernel(prefix=tmp_path / "prefix")
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ,
           "COURSE_PROFILE": "tiny",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    command = [str(JUPYTER), "lab", *make_lab_options(), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", "--allow-root",  # root: in containers
               str(NOTEBOOKS)]
    with open(tmp_path / "server.log", "w") as log:
        running = Server(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), port, token,
                         tmp_path / "server.log")
        try:
            yield running
        finally:
            running.stop()


def execute_request(code: str) -> dict:
    """An execute_request message in the JSON form the server's kernel websocket reads."""
    return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                       "username": "test", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}


def run_cell(connection: websocket.WebSocket, code: str, seconds: float) -> tuple[str, str]:
    """Send `code`, collect what it printed until the kernel is idle again: (stdout, status)."""
    request = execute_request(code)
    connection.send(json.dumps(request))
    printed, status, idle = [], "", False
    deadline = time.monotonic() + seconds
    while not (idle and status):
        left = deadline - time.monotonic()
        assert left > 0, f"no answer to the cell within {seconds} s; printed so far: {printed}"
        connection.settimeout(left)
        message = json.loads(connection.recv())
        if message.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            printed.append(content["text"])
        elif kind == "error":
            printed.append("\n".join(content["traceback"]))
        elif kind == "execute_reply":
            status = content["status"]
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return "".join(printed), status


def test_jupyter_lab_lists_the_course_kernel_and_runs_a_notebook_start_in_it(server):
    assert "started" in server.wait_until_ready(START_SECONDS)

    specs = server.api("GET", "/api/kernelspecs").json()["kernelspecs"]
    assert specs[KERNEL_NAME]["spec"]["display_name"] == KERNEL_DISPLAY_NAME
    assert specs[KERNEL_NAME]["spec"]["argv"][0] == sys.executable  # the course's own Python

    kernel = server.api("POST", "/api/kernels", json={"name": KERNEL_NAME}).json()
    try:
        channels = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel['id']}/channels?token={server.token}"
        connection = websocket.create_connection(channels, timeout=CELL_SECONDS)
        try:
            printed, status = run_cell(connection, START_CELL, CELL_SECONDS)
        finally:
            connection.close()
    finally:
        server.api("DELETE", f"/api/kernels/{kernel['id']}")

    assert status == "ok", printed
    assert "Profile : tiny (" in printed  # course.start's summary: the kernel inherited COURSE_PROFILE
    assert printed.strip().endswith("profile: tiny")
    assert "without encryption" not in server.log.read_text()  # make lab's kernels get CurveZMQ keys
