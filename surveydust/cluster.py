"""One place that makes a Dask client, from a named cluster profile.

Profiles live in dask.config under ``surveydust.cluster``; the defaults ship in
``configs/cluster.yaml`` (package ``surveydust.configs``) and are merged with
:func:`dask.config.update_defaults` at import, the way dask-jobqueue keeps its
own defaults. A user overrides them, or adds profiles, in a dask config file
(e.g. ``~/.config/dask/surveydust.yaml``), with ``DASK_SURVEYDUST__...``
environment variables, or with :func:`dask.config.set`::

    surveydust:
      cluster:
        default: mysite
        profiles:
          mysite: {kind: slurm, cores: 8, memory: 64GiB, worker_resources: {GPU: 1}, jobs: 4}

Each profile has a ``kind``:

``local``
    a :class:`distributed.LocalCluster` on this machine (the default);
``local-gpu``
    one worker process per visible NVIDIA GPU, each with ``CUDA_VISIBLE_DEVICES``
    set to its own device and the worker resource ``GPU=1`` (dask-cuda's
    ``LocalCUDACluster`` when installed, else plain ``distributed``); on a
    machine without GPUs it falls back to CPU workers with a warning;
``address``
    a running scheduler, reached at ``address`` within ``timeout``;
``slurm`` / ``pbs``
    a :mod:`dask_jobqueue` ``SLURMCluster`` / ``PBSCluster`` scaled to ``jobs`` jobs;
    ``worker_resources`` (e.g. ``{GPU: 1}``) becomes ``dask worker --resources GPU=1``.

All other profile keys are keyword arguments of the cluster class (of
:class:`distributed.Client` for ``address``). Typical use::

    with get_client("local", workers=2) as client:
        ...

    # in API functions: the compute keywords as one value (:class:`Compute`)
    compute = Compute(client, cluster, workers, progress)
    with compute.open() as c:
        ...
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import dask.config
import yaml
from dask.system import CPU_COUNT
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, Worker
from distributed.core import Server, Status
from distributed.deploy.cluster import Cluster
from distributed.diagnostics.plugin import WorkerPlugin

from surveydust.backend import ignore_interrupts_in_worker_process, verbose
from surveydust.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "ClusterClient",
    "Compute",
    "get_client",
    "gpu_workers",
    "make_cluster",
    "open_client",
    "profile_settings",
    "run_with_progress",
    "visible_gpus",
    "worker_resources",
]


KINDS: tuple[str, ...] = ("local", "local-gpu", "address", "slurm", "pbs")
_JOBQUEUE_KINDS = frozenset({"slurm", "pbs"})


def _load_defaults() -> dict[str, Any]:
    """Read the shipped ``cluster.yaml`` defaults."""
    path = resources.files("surveydust.configs") / "cluster.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


dask.config.update_defaults(_load_defaults())


class ClusterClient(Client):
    """A :class:`distributed.Client` that owns its cluster.

    ``Client(cluster).close()`` leaves the cluster running; this client also
    shuts the cluster down (its workers, or its batch jobs) when it is closed,
    including on leaving a ``with`` block.
    """

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close the client, then the cluster it was started with."""
        cluster = self.cluster
        try:
            return super().close(*args, **kwargs)
        finally:
            if cluster is not None:
                cluster.close()


def _positive_int(value: Any, what: str) -> int:
    """Return ``value`` as an int >= 1, or raise a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _find_profile(name: str, profiles: Mapping[str, Any]) -> str | None:
    """Key of profile ``name`` in ``profiles`` (``-`` and ``_`` are interchangeable)."""
    for key in (name, name.replace("-", "_"), name.replace("_", "-")):
        if key in profiles:
            return key
    return None


def profile_settings(profile: str | None = None, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """Resolve a profile from dask.config and apply ``overrides``.

    Returns ``(name, settings)`` where ``settings`` is a fresh dict that includes
    ``kind``. Overrides whose value is ``None`` are ignored (they mean "not
    given"). Keys are normalised to ``snake_case``.
    """
    name = profile if profile is not None else dask.config.get("surveydust.cluster.default")
    profiles = dask.config.get("surveydust.cluster.profiles", default=None) or {}
    key = _find_profile(str(name), profiles)
    if key is None:
        known = ", ".join(sorted(profiles)) or "none"
        raise InputError(f"unknown cluster profile {name!r}; known profiles: {known}")
    raw = profiles[key]
    if not isinstance(raw, Mapping):
        raise InputError(f"cluster profile {name!r} must be a mapping of settings, got {raw!r}")
    settings = {k.replace("-", "_"): copy.deepcopy(v) for k, v in raw.items()}
    settings.update({k.replace("-", "_"): v for k, v in overrides.items() if v is not None})
    kind = settings.get("kind")
    if kind is None:
        raise InputError(f"cluster profile {name!r} has no 'kind' (one of: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise InputError(
            f"cluster profile {name!r} has unknown kind {kind!r} (one of: {', '.join(KINDS)})"
        )
    return name, settings


def _check_keys(name: str, settings: Mapping[str, Any], *targets: Callable[..., Any]) -> None:
    """Refuse settings that none of ``targets`` takes as a keyword argument."""
    accepted: set[str] = set()
    for target in targets:
        params = inspect.signature(target).parameters.values()
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise InputError(f"cluster profile {name!r}: unknown setting(s) {', '.join(unknown)}")


def _local_cluster(name: str, settings: dict[str, Any]) -> LocalCluster:
    """Start a LocalCluster; ``n_workers: null`` means one worker per available core, and more
    workers than cores are capped at the cores (with a warning)."""
    # LocalCluster passes unknown keywords on to Nanny/Worker, which fail late and loudly.
    _check_keys(name, settings, LocalCluster, Nanny, Worker, Server)
    host = settings.get("host")
    if not settings.get("protocol") and host and "://" not in str(host):
        # With processes=False LocalCluster would default to inproc://, which takes no host.
        settings["protocol"] = "tcp://"
    if settings.get("n_workers") is None:
        settings["n_workers"] = CPU_COUNT
    settings["n_workers"] = _capped_workers(
        name, _positive_int(settings["n_workers"], f"cluster profile {name!r}: n_workers"))
    return LocalCluster(**_with_preload(settings))


def _capped_workers(name: str, workers: int) -> int:
    """At most one local worker per available core.

    Parameters
    ----------
    name
        Profile name, for the warning.
    workers
        Workers asked for (``--workers``, ``workers=`` or the profile's ``n_workers``).

    Returns
    -------
    int
        ``workers``, or :data:`dask.system.CPU_COUNT` (the cores this process may use, after
        CPU affinity and cgroup limits) when that is smaller; a warning line says so. Workers
        beyond the cores only compete for them, each with its own memory (a Keras worker
        holds hundreds of MB).
    """
    if workers <= CPU_COUNT:
        return workers
    logger.warning("cluster profile %r: %d workers asked for, but only %d core(s) are available: "
                   "starting %d", name, workers, CPU_COUNT, CPU_COUNT)
    return CPU_COUNT


def _with_preload(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with this module added to the worker preloads (after any of the profile's or
    of ``distributed.worker.preload``), so that :func:`dask_setup` runs in each local worker."""
    preload = settings.get("preload") or dask.config.get("distributed.worker.preload", default=None) or []
    argv = list(settings.get("preload_argv") or dask.config.get("distributed.worker.preload-argv", default=None)
                or [])
    if argv and not isinstance(argv[0], str):  # one argv per preload: ours takes none
        argv.append([])
    return {**settings, "preload": [*([preload] if isinstance(preload, str) else preload), __name__],
            "preload_argv": argv}


def dask_setup(worker: Worker) -> None:
    """Worker preload of the local profiles: a worker process ignores SIGINT (Ctrl-C goes to the
    whole process group; the client process handles it and shuts the cluster down), see
    :func:`surveydust.backend.ignore_interrupts_in_worker_process`.

    Parameters
    ----------
    worker
        The worker being started (distributed calls this through ``preload``).
    """
    ignore_interrupts_in_worker_process()


def visible_gpus() -> list[str]:
    """Device ids of the NVIDIA GPUs this process may use.

    ``CUDA_VISIBLE_DEVICES`` when set, else the indices listed by ``nvidia-smi``
    (none when it is missing or fails).
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        out = subprocess.run([nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _local_gpu_cluster(name: str, settings: dict[str, Any]) -> Cluster:
    """One worker per visible GPU, pinned with CUDA_VISIBLE_DEVICES, resource GPU=1."""
    gpus = visible_gpus()
    wanted = settings.pop("n_workers", None)
    if not gpus:
        warnings.warn(f"cluster profile {name!r}: no NVIDIA GPU is visible; running CPU workers "
                      "without the GPU resource instead", UserWarning, stacklevel=4)
        return _local_cluster(name, {**settings, "n_workers": wanted})
    if wanted is not None:
        if _positive_int(wanted, "workers") > len(gpus):
            raise InputError(f"cluster profile {name!r}: {wanted} GPU workers asked for, but only "
                             f"{len(gpus)} GPU(s) are visible ({','.join(gpus)})")
        gpus = gpus[:wanted]
    _check_keys(name, settings, LocalCluster, Nanny, Worker, Server)
    host = settings.get("host") or "127.0.0.1"
    settings = _with_preload(settings)
    with contextlib.suppress(ImportError):
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(gpus), resources={"GPU": 1}, **settings)
    worker = {"nthreads": settings.get("threads_per_worker") or 1, "host": host,
              "memory_limit": settings.get("memory_limit", "auto"), "resources": {"GPU": 1},
              "preload": settings["preload"], "preload_argv": settings["preload_argv"]}
    specs = {f"gpu-{g}": {"cls": Nanny, "options": {**worker, "env": {"CUDA_VISIBLE_DEVICES": g}}} for g in gpus}
    scheduler = {"cls": Scheduler,
                 "options": {"host": host, "dashboard_address": settings.get("dashboard_address", "127.0.0.1:0")}}
    return SpecCluster(workers=specs, scheduler=scheduler, name=f"surveydust-{name}")


def _resources_arg(name: str, spec: Any) -> str:
    """``{GPU: 1, MEM: 1e9}`` -> ``"GPU=1,MEM=1000000000.0"`` for ``dask worker --resources``."""
    if not isinstance(spec, Mapping):
        raise InputError(
            f"cluster profile {name!r}: worker_resources must be a mapping like {{GPU: 1}}, "
            f"got {spec!r}"
        )
    return ",".join(f"{key}={value}" for key, value in spec.items())


def _jobqueue_class(kind: str) -> Any:
    """The dask-jobqueue cluster class of a ``slurm`` or ``pbs`` profile."""
    from dask_jobqueue import PBSCluster, SLURMCluster  # registers jobqueue.* defaults

    return SLURMCluster if kind == "slurm" else PBSCluster


def _check_submit_command(name: str, kind: str) -> None:
    """Refuse a slurm/pbs profile whose submit command (``sbatch``, ``qsub``) is not on PATH.

    dask-jobqueue runs the command only in the background once the cluster is scaled, and a
    missing one surfaces there as a long traceback; this checks it before any scheduler starts.

    Parameters
    ----------
    name
        Profile name, for the message.
    kind
        ``"slurm"`` or ``"pbs"``.

    Raises
    ------
    ValueError
        One line naming the command and the profile, when the command is not found.
    """
    command = shlex.split(_jobqueue_class(kind).job_cls.submit_command)[0]
    if shutil.which(command) is None:
        raise InputError(f"cluster profile {name!r} submits {kind.upper()} jobs with {command}, which is not "
                         "on PATH (run on a login node of the cluster, or use --cluster local)")


def _jobqueue_cluster(name: str, kind: str, settings: dict[str, Any], submit: bool) -> Cluster:
    """Build (but do not scale) a SLURMCluster or PBSCluster; ``submit``: jobs will be submitted,
    so the batch system's submit command must be there."""
    from dask_jobqueue.core import Job, JobQueueCluster

    cls = _jobqueue_class(kind)
    settings.pop("jobs", None)
    spec = settings.pop("worker_resources", None)
    _check_keys(name, settings, cls, JobQueueCluster, cls.job_cls, Job, SpecCluster)
    if submit:
        _check_submit_command(name, kind)
    if spec:
        extra = settings.get("worker_extra_args")
        if extra is None:
            extra = dask.config.get(f"jobqueue.{kind}.worker-extra-args", default=None) or []
        settings["worker_extra_args"] = [*extra, "--resources", _resources_arg(name, spec)]
    return cls(**settings)


def _construct_cluster(name: str, kind: str, settings: dict[str, Any], submit: bool) -> Cluster:
    """Construct the cluster of a local/slurm/pbs profile; bad kwargs become ValueError."""
    try:
        if kind == "local":
            return _local_cluster(name, settings)
        if kind == "local-gpu":
            return _local_gpu_cluster(name, settings)
        return _jobqueue_cluster(name, kind, settings, submit)
    except TypeError as exc:
        raise InputError(f"cluster profile {name!r}: {exc}") from exc


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _build_cluster(name: str, kind: str, settings: dict[str, Any], submit: bool = False) -> Cluster:
    """:func:`_construct_cluster` (``submit``: its jobs will be submitted), with Ctrl-C (SIGINT)
    and SIGTERM held back until it returns.

    A cluster interrupted half-way through its start cannot be closed cleanly (Dask's exit
    handler then fails with a traceback about workers still starting). A signal that comes
    meanwhile goes to its handler once the cluster is up; if the handler raises (Ctrl-C:
    ``KeyboardInterrupt``), the cluster is closed first. Only in the main thread, where
    Python runs signal handlers; ignored signals stay ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return _construct_cluster(name, kind, settings, submit)
    # None: a handler not installed from Python, left alone
    previous = {signum: handler for signum in _HELD_SIGNALS
                if (handler := signal.getsignal(signum)) not in (None, signal.SIG_IGN)}
    held: list[int] = []
    for signum in previous:
        signal.signal(signum, lambda received, frame: held.append(received))
    cluster = None
    try:
        cluster = _construct_cluster(name, kind, settings, submit)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            try:
                signal.raise_signal(held[0])
            except BaseException:
                if cluster is not None:
                    cluster.close()
                raise
    return cluster


def make_cluster(profile: str | None = None, **overrides: Any) -> Cluster:
    """Build the cluster object of a ``local``, ``slurm`` or ``pbs`` profile.

    A LocalCluster starts its ``n_workers`` workers; a jobqueue cluster is
    returned unscaled (no job is submitted), so ``cluster.job_script()`` shows
    what would be sent. The caller closes it. ``overrides`` replace profile
    keys (``None`` values are ignored).
    """
    name, settings = profile_settings(profile, **overrides)
    kind = settings.pop("kind")
    if kind == "address":
        raise InputError(
            f"cluster profile {name!r} connects to a running scheduler; use get_client()"
        )
    return _build_cluster(name, kind, settings)


def _connect(name: str, settings: dict[str, Any]) -> Client:
    """Connect to the scheduler of an ``address`` profile, failing within its timeout."""
    address = settings.pop("address", None)
    if not address:
        raise InputError(
            f"cluster profile {name!r} needs an 'address' such as tcp://host:8786 "
            f"(pass address=... or set surveydust.cluster.profiles.{name}.address)"
        )
    timeout = settings.pop("timeout", None) or dask.config.get("distributed.comm.timeouts.connect")
    seconds = parse_timedelta(timeout, default="s")
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["client"] = Client(address, timeout=seconds, **settings)
        except BaseException as exc:  # noqa: BLE001 (junk from a port that is not Dask: any error)
            outcome["error"] = exc

    # Client's own timeout does not cover a port that accepts the connection and then says
    # nothing (the handshake waits forever): a thread with a hard deadline does.
    thread = threading.Thread(target=attempt, name="surveydust-connect", daemon=True)
    thread.start()
    thread.join(seconds + CONNECT_GRACE_S)
    if thread.is_alive():
        raise InputError(f"no Dask scheduler answered at {address} within {seconds:g}s")
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, (OSError, TimeoutError)):
            raise InputError(f"could not reach a Dask scheduler at {address} within {seconds:g}s") from None
        raise InputError(f"{address} did not answer as a Dask scheduler ({type(exc).__name__})") from None
    return outcome["client"]


def _check_scaling(name: str, kind: str, workers: int | None, jobs: int | None) -> None:
    """Refuse ``workers``/``jobs`` that are invalid or do not apply to ``kind``."""
    if workers is not None:
        _positive_int(workers, "workers")
    if jobs is not None:
        _positive_int(jobs, "jobs")
    if kind == "address" and (workers is not None or jobs is not None):
        raise InputError(
            f"cluster profile {name!r} connects to a running scheduler; workers=/jobs= do not apply"
        )
    if kind in ("local", "local-gpu") and jobs is not None:
        raise InputError(
            f"jobs= applies to slurm/pbs profiles; profile {name!r} is local (use workers=)"
        )
    if workers is not None and jobs is not None:
        raise InputError("give workers= or jobs=, not both")


SUBMIT_TIMEOUT_S = 60.0  # longest wait for the batch system to accept (not start) the jobs


def _scale(
    name: str, cluster: Cluster, settings: dict[str, Any], workers: int | None, jobs: int | None
) -> None:
    """Submit the jobs of a jobqueue cluster (``workers`` workers, else ``jobs`` jobs) and wait
    until the batch system has accepted every one: a refused submission (a bad partition,
    account or limit) is one ``ValueError`` line, not a wait for workers that never come."""
    refusals = _SubmitRefusals()
    log = logging.getLogger("tornado.application")  # where dask-jobqueue's background submission fails
    log.addFilter(refusals)
    try:
        if workers is not None:
            cluster.scale(n=workers)
        else:
            n_jobs = jobs if jobs is not None else settings.get("jobs", 1)
            cluster.scale(jobs=_positive_int(n_jobs, f"cluster profile {name!r}: jobs"))
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while not (cluster.workers and all(getattr(job, "job_id", None) for job in cluster.workers.values())):
            if refusals.messages or time.monotonic() > deadline:
                for job in list(getattr(cluster, "_created", ())):  # never submitted: let close() pass them
                    if job.status == Status.created:
                        job.status = Status.failed
                reason = refusals.messages[0] if refusals.messages else \
                    f"no job was accepted within {SUBMIT_TIMEOUT_S:g} s"
                raise InputError(f"cluster profile {name!r}: the batch system refused the job: {reason}")
            time.sleep(0.1)
    finally:
        log.removeFilter(refusals)


class _SubmitRefusals(logging.Filter):
    """Keeps (as one line each) and drops the tracebacks of failed job submissions."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, RuntimeError) and "Command exited with non-zero exit code" in str(exc)):
            return True
        text = str(exc)
        command = text.split("Command:\n", 1)[-1].split("\n", 1)[0].split(" ")[0]
        stderr = text.split("stderr:\n", 1)[-1].strip().replace("\n", " ") or "no message"
        self.messages.append(f"{command} failed: {stderr}")
        return False


def _announce_dashboard(client: Client) -> None:
    """Print ``Dask dashboard: <url>`` (to stderr) when the scheduler serves one.

    Also switches on the scheduler's task-stream recording, which Dask
    otherwise starts only when a dashboard page is first opened: a user who
    opens the link mid-run then sees the tasks from the start.
    """
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):
        link = None
    if link:
        with contextlib.suppress(Exception):  # recording is a convenience; never fail a run for it
            client.get_task_stream(start=time.time())
        print(f"Dask dashboard: {link}", file=sys.stderr, flush=True)


def get_client(
    profile: str | None = None,
    *,
    workers: int | None = None,
    jobs: int | None = None,
    address: str | None = None,
    **overrides: Any,
) -> Client:
    """Return a Dask client for the named cluster profile.

    Parameters
    ----------
    profile
        Name of a profile under ``surveydust.cluster.profiles``; ``None`` uses
        ``surveydust.cluster.default`` (or ``"address"`` when ``address`` is given).
    workers
        Number of workers: ``n_workers`` of a local profile; for slurm/pbs the
        number of workers to scale to (instead of ``jobs``).
    jobs
        Number of batch jobs for a slurm/pbs profile (overrides the profile's ``jobs``).
    address
        Scheduler address; implies the ``address`` profile, or overrides the
        address of the given address-kind profile.
    **overrides
        Replace profile keys (cluster keyword arguments); ``None`` values are ignored.

    The client owns any cluster it started: closing it (e.g. leaving
    ``with get_client(...) as client:``) shuts the cluster down. A client of an
    ``address`` profile only disconnects. ``Dask dashboard: <url>`` is logged
    and printed to stderr. Every configuration problem, and a scheduler that
    does not answer within the profile's ``timeout``, raises ``ValueError``.
    """
    if address is not None:
        overrides["address"] = address
        profile = "address" if profile is None else profile
    name, settings = profile_settings(profile, **overrides)
    kind = settings.pop("kind")
    if address is not None and kind != "address":
        raise InputError(f"address= needs an address profile; profile {name!r} is {kind}")
    _check_scaling(name, kind, workers, jobs)
    if kind == "address":
        client = _connect(name, settings)
    else:
        client = _start(name, kind, settings, workers, jobs)
    _announce_dashboard(client)
    return client


CONNECT_GRACE_S = 5.0  # beyond the profile's timeout, before a silent scheduler address is given up
DRAIN_TIMEOUT_S = 30.0  # longest wait for the running tasks of a failed computation


class QuietWorkerLogs(WorkerPlugin):
    """Worker plugin: a failing task reaches the user as one ``Error:`` line from the client, so
    the worker's own "Compute Failed" dump of it is logged only with ``surveydust -v``."""

    name = "surveydust-quiet-worker-logs"

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(_drop_task_failures)
        logging.getLogger("distributed.worker.state_machine").addFilter(_drop_task_failures)


def _drop_task_failures(record: logging.LogRecord) -> bool:
    """False for a failed task's dump and for the cancellations that follow it."""
    msg = str(record.msg)
    return not (msg.startswith("Compute Failed") or "ended with CancelledError" in msg)


def _start(
    name: str, kind: str, settings: dict[str, Any], workers: int | None, jobs: int | None
) -> ClusterClient:
    """Build the cluster, scale it, and attach an owning client (closing the cluster on failure)."""
    if kind in ("local", "local-gpu") and workers is not None:
        settings["n_workers"] = workers
    scaling = dict(settings)
    cluster = _build_cluster(name, kind, settings, submit=True)
    try:
        if kind in _JOBQUEUE_KINDS:
            _scale(name, cluster, scaling, workers, jobs)
        client = ClusterClient(cluster)
        if not verbose():
            client.register_plugin(QuietWorkerLogs())
        return client
    except BaseException:
        cluster.close()
        raise


@contextlib.contextmanager
def open_client(client: Client | None = None, **kwargs: Any) -> Iterator[Client]:
    """Yield ``client`` unchanged, or a new one from :func:`get_client` that is closed on exit.

    ``kwargs`` are :func:`get_client` arguments (``profile``, ``workers``,
    ``jobs``, ``address``, overrides). With a given client they do not apply:
    the caller owns that client, and non-``None`` settings trigger a warning.
    """
    if client is not None:
        ignored = sorted(k for k, v in kwargs.items() if v is not None)
        if ignored:
            warnings.warn(
                f"a Dask client was given, so cluster settings {ignored} are ignored",
                UserWarning,
                stacklevel=3,
            )
        yield client
        return
    owned = get_client(**kwargs)
    try:
        yield owned
    finally:
        owned.close()


@dataclass(frozen=True)
class Compute:
    """Where and how a job computes: the compute keywords of every entry point, as one value.

    Attributes
    ----------
    client : an existing ``distributed.Client``; the caller owns it (``cluster`` and
        ``workers`` do not apply then).
    cluster : otherwise the cluster profile to start for the job (None: the default profile),
        closed when the job ends.
    workers : number of workers of that cluster (None: the profile's).
    progress : log progress lines and show a progress bar on a terminal.
    """

    client: Client | None = None
    cluster: str | None = None
    workers: int | None = None
    progress: bool = True

    def open(self) -> contextlib.AbstractContextManager[Client]:
        """The job's client (:func:`open_client`): the given one, or one started for the job."""
        return open_client(self.client, profile=self.cluster, workers=self.workers)


def gpu_workers(client: Client) -> list[str]:
    """Addresses of the workers that advertise a ``GPU`` resource (empty: a CPU-only cluster)."""
    return [addr for addr, res in worker_resources(client).items() if res.get("GPU")]


def worker_resources(client: Client) -> dict[str, dict[str, float]]:
    """Resources (e.g. ``{"GPU": 1.0}``) of each worker, keyed by worker address."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: dict(info.get("resources") or {}) for addr, info in workers.items()}


def run_with_progress(client: Client, collection: Any, progress: bool = True) -> Any:
    """Compute a dask collection on ``client`` and return its result (errors from
    the tasks are raised here), with a progress bar when stderr is a terminal."""
    from distributed import progress as progress_bar

    future = client.compute(collection)
    try:
        if progress and sys.stderr.isatty():
            progress_bar(future)
            print(file=sys.stderr)
        return future.result()
    except BaseException:
        # no task of it may still write (e.g. into a temporary store) once the caller cleans up
        _cancel_and_drain(client, future, set(collection.__dask_graph__().keys()))
        raise


def _cancel_and_drain(client: Client, future: Any, keys: set[Any], timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Cancel ``future``'s computation and wait (at most ``timeout_s``) until none of the
    graph's ``keys`` still runs on a worker (cancelling does not stop a running task)."""
    client.cancel(future, force=True)
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(Exception):  # a cluster that is going away has nothing left to drain
        while time.monotonic() < deadline:
            if not any(k in keys for running in client.processing().values() for k in running):
                return
            time.sleep(0.1)
