"""Where trials run: in this process (--jobs 1), in local worker processes (--jobs N), or as Ray tasks (--ray).

Each executor has submit(doc, recipe_path, objectives, cache_dir, measure) -> a future with .result(),
and shutdown(cancel). The study's ask/tell loop stays on the driver either way.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import tempfile
from pathlib import Path

PATH_KEYS = ("model", "data", "calibration_data")


def _trial(*args):
    from edgeopt.tune.trial import run_trial

    return run_trial(*args)


class _Done:
    """A future computed when asked for (in-process trials run one at a time, in order)."""

    def __init__(self, fn, args):
        self._fn, self._args, self._value, self._ready = fn, args, None, False

    def result(self):
        if not self._ready:
            self._value, self._ready = self._fn(*self._args), True
        return self._value


class InlineExecutor:
    window = 1

    def submit(self, *args):
        return _Done(_trial, args)

    def shutdown(self, cancel: bool = False) -> None:
        pass


def _init_worker() -> None:
    # One thread per worker: the workers already use the cores (onnxruntime sessions are single-threaded).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle


class PoolExecutor:
    """Worker processes started by spawn (no forked onnxruntime or Optuna state)."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.window = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker)

    def submit(self, *args):
        return self.pool.submit(_trial, *args)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:  # running trials are abandoned; the study marks them failed
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


# --- Ray ------------------------------------------------------------------------------------------

def ray_missing() -> str:
    return "--ray needs Ray, which is not installed: pip install 'edgeopt[ray]'"


# Ray's token authentication (as in Ray 2.60): a cluster started with a token (`ray start --head` when RAY_AUTH_MODE=token or a
# token file exists, ~/.ray/auth_token) rejects any driver that does not send it. Ray sends a token to an explicit
# address only when RAY_AUTH_MODE=token is set in the driver's environment; it reads the token from RAY_AUTH_TOKEN,
# else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token.
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
TOKEN_HELP = "set RAY_AUTH_TOKEN to the cluster's token (run `ray get-auth-token` on the head) and run again"


def _send_given_token() -> None:
    """A token given in the environment is meant for the cluster: have Ray send it (unless RAY_AUTH_MODE says)."""
    if os.environ.get("RAY_AUTH_MODE") is None and any(os.environ.get(name) for name in TOKEN_VARIABLES):
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:  # Ray reads its config once: refresh it, as Ray's own _enable_token_auth does
            try:
                from ray._raylet import Config

                Config.initialize("")
            except (ImportError, AttributeError):
                pass


def _auth_rejected(exc: BaseException, ray) -> bool:
    """Ray's own authentication error anywhere in the chain. ray.init wraps it in RuntimeError / ConnectionError
    and keeps only its traceback text, so the text is read too (Ray's class name and its InvalidAuthToken status)."""
    auth_error = getattr(getattr(ray, "exceptions", None), "AuthenticationError", None)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if auth_error is not None and isinstance(exc, auth_error):
            return True
        text = str(exc)
        if "ray.exceptions.AuthenticationError" in text or "InvalidAuthToken" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _token_problem(address: str) -> str:
    """One line on what this driver sent, after the cluster's token authentication refused it."""
    where = f"--ray {address}: cannot connect to the Ray cluster: its token authentication rejected this driver"
    if (os.environ.get("RAY_AUTH_MODE") or "").lower() != "token":
        return f"{where}, which sent no token; {TOKEN_HELP}"
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source = f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    elif (Path.home() / ".ray" / "auth_token").is_file():
        source = str(Path.home() / ".ray" / "auth_token")
    else:
        return f"{where}: RAY_AUTH_MODE=token but no token was found; {TOKEN_HELP}"
    return f"{where}: the token from {source} is not the cluster's; {TOKEN_HELP}"


def connect_ray(address: str, jobs: int | None):
    """Use the Ray instance this process already has, else start (`local`) or join one."""
    from edgeopt.errors import UserError

    try:
        import ray
    except ImportError:
        raise UserError(ray_missing()) from None
    if not ray.is_initialized():
        import logging

        if address != "local":
            _send_given_token()

        try:
            if address == "local":
                ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, AuthenticationError...
            if _auth_rejected(exc, ray):
                raise UserError(_token_problem(address)) from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--ray {address}: cannot connect to a Ray cluster ({first}); start one with "
                            "`ray start --head` and pass HEAD:6379, or use --ray local") from None
    return ray


def shipped_files(doc: dict) -> dict[str, dict[str, bytes]]:
    """The bytes of the recipe's model (and its external data files) and data, by recipe key."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    files: dict[str, dict[str, bytes]] = {}
    for key in PATH_KEYS:
        if doc.get(key) is None:
            continue
        path = Path(doc[key])
        entry = {path.name: path.read_bytes()}
        if key == "model":
            model = onnx.load(path, load_external_data=False)
            for tensor in model.graph.initializer:
                if uses_external_data(tensor):
                    location = next(e.value for e in tensor.external_data if e.key == "location")
                    entry.setdefault(location, (path.parent / location).read_bytes())
        files[key] = entry
    return files


def _materialize(files: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """Write shipped files once per node, under a folder named by their content; return paths by key."""
    digest = hashlib.sha256()
    for key in sorted(files):
        for name in sorted(files[key]):
            digest.update(f"{key}/{name}".encode())
            digest.update(files[key][name])
    root = Path(tempfile.gettempdir()) / "edgeopt-ray-files" / digest.hexdigest()[:24]
    paths = {}
    for key, entry in files.items():
        folder = root / key
        for name, data in entry.items():
            target = folder / name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, target)  # concurrent tasks on one node write the same bytes
        paths[key] = str(folder / next(iter(entry)))
    return paths


def _local_cache(cache_dir: str | None) -> str | None:
    """The driver's cache folder when this node can use it (one machine, a shared disk), else a local one."""
    for candidate in ([cache_dir] if cache_dir else []) + [str(Path(tempfile.gettempdir()) / "edgeopt-stage-cache")]:
        try:
            Path(candidate).mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    return None


def ray_trial(files, doc, recipe_path, objectives, cache_dir, measure):
    from edgeopt.tune.trial import run_trial

    doc = dict(doc)
    doc.update(_materialize(files))
    return run_trial(doc, recipe_path, objectives, _local_cache(cache_dir), measure)


class _RayFuture:
    def __init__(self, ray, ref):
        self.ray, self.ref = ray, ref

    def result(self):
        return self.ray.get(self.ref)


class RayExecutor:
    """Each trial is a Ray task (1 CPU); the model and data go once through the object store."""

    def __init__(self, address: str, jobs: int | None, base_doc: dict):
        self.ray = connect_ray(address, jobs)
        self.window = jobs or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.files_ref = self.ray.put(shipped_files(base_doc))
        self.remote = self.ray.remote(num_cpus=1, max_retries=0)(ray_trial)
        self.refs = []

    def submit(self, *args):
        ref = self.remote.remote(self.files_ref, *args)
        self.refs.append(ref)
        return _RayFuture(self.ray, ref)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self.refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # already finished
                    pass
