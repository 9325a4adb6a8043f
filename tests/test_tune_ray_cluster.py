"""edgeopt tune --ray against a Ray cluster started the way the README says (`ray start --head`), with Ray's token
authentication on: the driver gets the token as a user would (`ray get-auth-token` on the head -> RAY_AUTH_TOKEN),
runs its trials as tasks on that cluster, and without the token it exits 2 with one line that names the token.

The cluster is this module's own: its own port and Ray ports, its own --temp-dir, its own HOME (so its token file is
not ~/.ray/auth_token), and teardown stops only its processes (`ray stop` would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgeopt.cli.main import cli
from test_tune import OBJECTIVES, make_inputs, recipe_doc, write

pytest.importorskip("ray")

pytestmark = pytest.mark.xdist_group("tune_ray")

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TRIALS = 4
# Ray's C++ log lines ("[2026-01-01 12:00:00,000 W 123 123] gcs_client.cc:210: ...") and Python log lines.
RAY_LOG_LINE = re.compile(r"^(\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \d+ \d+\] |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s)")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any Ray setting (address, auth mode, token) the caller may have."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, command line), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), cmdline)
    return table


def stop_cluster(pgid: int, temp_dir: str) -> None:
    """Stop this cluster only: its process group (gcs_server, raylet, agents), whatever those started (workers
    get their own process groups) and anything running from its temp dir."""
    if not os.path.isdir("/proc"):
        os.killpg(pgid, signal.SIGKILL)
        return
    assert pgid != os.getpgid(0)
    table = _proc_table()
    spared, pid = set(), os.getpid()  # this process and its ancestors
    while pid in table and pid not in spared:
        spared.add(pid)
        pid = table[pid][0]
    ours = {pid for pid, (_, group, cmd) in table.items() if group == pgid or temp_dir in cmd} - spared
    grew = True
    while grew:
        children = {pid for pid, (parent, _, _) in table.items() if parent in ours} - ours - spared
        ours |= children
        grew = bool(children)
    for pid in ours:  # SIGKILL, as `ray stop --force` does
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while ours and time.monotonic() < deadline:
        ours = {pid for pid in ours if os.path.exists(f"/proc/{pid}") and not _zombie(pid)}
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster on 127.0.0.1 with token authentication, and the token `ray get-auth-token` gives."""
    base = tmp_path_factory.mktemp("ray_cluster")
    head_home, driver_home = base / "head_home", base / "driver_home"
    head_home.mkdir()
    driver_home.mkdir()
    # Ray's unix sockets live under --temp-dir: keep the path short (sun_path is 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="eo-ray-", dir="/tmp")
    env = clean_env(head_home, RAY_AUTH_MODE="token")
    # A new head has no token: make one (written to the head's ~/.ray/auth_token), then start with auth on.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    port, client, dash, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    # Every port Ray would otherwise take at a fixed default is this cluster's own.
    own_ports = ["--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent),
                 "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
                 "--metrics-export-port", str(metrics)]
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:  # with ray[client], the head also starts a Ray Client server
        own_ports += ["--ray-client-server-port", str(client)]
    start = subprocess.Popen(
        [RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp_dir, *own_ports],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pgid = start.pid
    try:
        log, _ = start.communicate(timeout=120)
        assert start.returncode == 0, log
        # What the README tells users to run on the head.
        got = subprocess.run([RAY, "get-auth-token"], env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", got.stdout), got.stderr
        yield {"address": f"127.0.0.1:{port}", "token": got.stdout, "temp_dir": temp_dir,
               "driver_home": driver_home}
    finally:
        if start.poll() is None:
            start.kill()
        stop_cluster(pgid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def edgeopt(cluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True, timeout=300,
                          env=clean_env(cluster["driver_home"], **env))


def ray_trial_tasks(temp_dir: str) -> int:
    """How many ray_trial tasks the cluster's workers ran (Ray marks each task in its worker's .out log)."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    return sum(path.read_text(errors="replace").count(":task_name:ray_trial") for path in logs.glob("worker-*.out"))


def test_tune_on_cluster_with_token(cluster, tmp_path):
    make_inputs(tmp_path)
    recipe = write(tmp_path, recipe_doc())
    out = tmp_path / "out"
    assert ray_trial_tasks(cluster["temp_dir"]) == 0
    run = edgeopt(cluster, "tune", str(recipe), "--ray", cluster["address"], "--trials", str(TRIALS), "--seed", "0",
                  "-o", str(out), "--format", "json", "-q", RAY_AUTH_TOKEN=cluster["token"])
    assert run.returncode == 0, run.stderr
    assert "InvalidAuthToken" not in run.stderr
    doc = json.loads(run.stdout)
    assert json.loads((out / "tune.json").read_text()) == doc
    assert [t["number"] for t in doc["trials"]] == list(range(TRIALS))
    for t in doc["trials"]:
        assert t["state"] == "complete", t
        assert t["values"]["est_latency_ms@myriadx"] > 0 and 0.9 < t["values"]["cosine"] <= 1.0
    assert doc["baseline"]["values"]["cosine"] > 0.99 and doc["pareto"]
    rows = (out / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 1 + TRIALS
    for line, t in zip(rows[1:], doc["trials"]):
        row = dict(zip(header, line.split(",")))
        assert int(row["number"]) == t["number"] and row["state"] == "complete"
        for o in OBJECTIVES:
            assert float(row[o]) == pytest.approx(t["values"][o], rel=1e-12)
    # The trials (and the recipe as written, the baseline) ran as tasks on the cluster's workers.
    deadline = time.monotonic() + 10
    while ray_trial_tasks(cluster["temp_dir"]) < TRIALS + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_trial_tasks(cluster["temp_dir"]) == TRIALS + 1
    # A Pareto recipe run here gives the figures the cluster reported for it.
    first = next(t for t in doc["trials"] if t["number"] == doc["pareto"][0])
    path = out / first["recipe"]
    assert "search" not in yaml.safe_load(path.read_text())
    again = CliRunner().invoke(cli, ["run", str(path), "--no-measure", "--format", "json", "-q"])
    assert again.exit_code == 0, again.stderr
    final = json.loads(again.stdout)["stages"][-1]
    assert final["devices"]["myriadx"]["est_latency_ms"] == first["values"]["est_latency_ms@myriadx"]
    assert final["fidelity"]["vs_input"]["cosine"] == first["values"]["cosine"]


def _edgeopt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not RAY_LOG_LINE.match(line)]


def test_tune_on_cluster_without_token(cluster, tmp_path):
    make_inputs(tmp_path)
    recipe = write(tmp_path, recipe_doc())
    before = ray_trial_tasks(cluster["temp_dir"])
    # Ray tries the connection 20 times, a second apart, whatever the cause; once keeps the test short.
    run = edgeopt(cluster, "tune", str(recipe), "--ray", cluster["address"], "--trials", str(TRIALS),
                  "-o", str(tmp_path / "out"), "-q", RAY_NUM_REDIS_GET_RETRIES="1")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "InvalidAuthToken" in run.stderr  # what Ray logged: the cluster did refuse this driver
    assert "Traceback" not in run.stderr and run.stdout == ""
    lines = _edgeopt_lines(run.stderr)
    assert lines == [f"edgeopt: error: --ray {cluster['address']}: cannot connect to the Ray cluster: its token "
                     "authentication rejected this driver, which sent no token; set RAY_AUTH_TOKEN to the "
                     "cluster's token (run `ray get-auth-token` on the head) and run again"], run.stderr
    assert not (tmp_path / "out" / "tune.json").exists()
    assert ray_trial_tasks(cluster["temp_dir"]) == before


# --- the same decisions without a cluster: how Ray 2.60 reports a refused token, and what the line then says ----

def _refused_as_ray_init_raises():
    """ray.init(address=...) on a refused token: node.py formats the AuthenticationError's traceback into a
    RuntimeError, worker.py raises ConnectionError from that (Ray 2.60)."""
    import traceback

    from ray.exceptions import AuthenticationError

    try:
        raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
    except AuthenticationError:
        last = traceback.format_exc()
    try:
        raise RuntimeError(f"Failed to connect to GCS. Last connection error: {last}")
    except RuntimeError as gcs:
        try:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from gcs
        except ConnectionError as exc:
            return exc


def test_auth_rejection_is_read_from_ray_errors():
    import ray
    from ray.exceptions import AuthenticationError

    from edgeopt.tune.executors import _auth_rejected

    assert _auth_rejected(_refused_as_ray_init_raises(), ray)
    assert _auth_rejected(AuthenticationError("Token authentication is enabled but no authentication token was "
                                              "found"), ray)
    try:
        raise RuntimeError("Failed to connect to GCS. Last connection error: ray.exceptions.RpcError: Timed out "
                           "while waiting for GCS to become available.")
    except RuntimeError as gcs:
        unreachable = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")
        unreachable.__cause__ = gcs
    assert not _auth_rejected(unreachable, ray)
    assert not _auth_rejected(ValueError("When connecting to an existing cluster, num_cpus must not be provided."), ray)


def _private_environ(monkeypatch, **extra: str) -> dict:
    """os.environ as a plain copy without Ray settings, for this test only: the process's own environment (which an
    in-process ray.init reads later) is never touched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    monkeypatch.setattr(os, "environ", env)
    return env


def test_token_line_says_what_the_driver_sent(monkeypatch, tmp_path):
    from edgeopt.tune import executors

    env = _private_environ(monkeypatch, HOME=str(tmp_path))
    assert "which sent no token; set RAY_AUTH_TOKEN" in executors._token_problem("h:1")
    env["RAY_AUTH_MODE"] = "token"
    assert "RAY_AUTH_MODE=token but no token was found" in executors._token_problem("h:1")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    assert f"the token from {tmp_path}/.ray/auth_token is not the cluster's" in executors._token_problem("h:1")
    env["RAY_AUTH_TOKEN"] = "0" * 64
    line = executors._token_problem("h:1")
    assert line == ("--ray h:1: cannot connect to the Ray cluster: its token authentication rejected this driver: "
                    "the token from RAY_AUTH_TOKEN is not the cluster's; set RAY_AUTH_TOKEN to the cluster's token "
                    "(run `ray get-auth-token` on the head) and run again")


def test_given_token_is_sent_unless_the_mode_says_otherwise(monkeypatch):
    from edgeopt.tune import executors

    monkeypatch.delitem(sys.modules, "ray", raising=False)  # leave this process's Ray config alone
    env = _private_environ(monkeypatch)
    executors._send_given_token()
    assert "RAY_AUTH_MODE" not in env  # nothing given: Ray decides, as it would
    env["RAY_AUTH_TOKEN_PATH"] = "/somewhere/token"
    executors._send_given_token()
    assert env["RAY_AUTH_MODE"] == "token"
    env["RAY_AUTH_MODE"] = "disabled"
    executors._send_given_token()
    assert env["RAY_AUTH_MODE"] == "disabled"
