"""surveydust on a real single-node SLURM started on this machine (no mocks).

The ``slurm`` fixture installs (when missing) the Debian packages ``slurmctld
slurmd slurm-client munge``, starts ``munged`` (as user ``munge``, with its own
key, socket and log), ``slurmctld`` and ``slurmd -N localhost`` in the
foreground as children of this process, on free ports and with every path in a
temporary directory, so nothing system-wide is used or changed except the
installed packages. It skips with the reason where that cannot be done (not
root, no apt-get, install failure, daemons that do not come up), and stops
everything it started, by PID, when the module is done.

The test then runs ``surveydust run-catalogue --cluster slurm --jobs 2`` as a
user would, the slurm profile sized for this node through a dask config file in
``DASK_CONFIG`` (configs/cluster.yaml is not touched), and checks that the
catalogue equals the one from the session's LocalCluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dask.config
import numpy as np
import pytest
import yaml

from surveydust.cluster import make_cluster
from surveydust.demo import make_demo_field
from surveydust.infer import run_catalogue
from surveydust.stores.catalogue import open_catalogue

pytestmark = pytest.mark.system

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "sinfo", "squeue", "scancel", "sbatch", "munged", "mungekey", "munge")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
PARTITION = "debug"
START_TIMEOUT_S = 60.0
JOBS = 2


def _which(program: str) -> str | None:
    return shutil.which(program, path=SBIN_PATH)


def _tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, on one line, for a skip reason."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"({path.name}: no log)"
    return f"{path.name}: " + " | ".join(text[-lines:])


def _install() -> None:
    """apt-get install the SLURM and munge packages when a program is missing (skip on failure)."""
    if all(_which(p) for p in PROGRAMS):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"SLURM is not installed and there is no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SBIN_PATH}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
               "-o", "DPkg::Lock::Timeout=60", *PACKAGES]
    result = None
    for commands in ([install], [[apt, "update", "-qq"], install]):  # stale package lists: update once
        try:
            for command in commands:
                result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)
                if result.returncode != 0:
                    break
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install {' '.join(PACKAGES)} with apt-get: {exc}")
        if result.returncode == 0 and all(_which(p) for p in PROGRAMS):
            return
    last = (result.stderr or result.stdout).strip().splitlines()[-1:] if result else []
    pytest.skip(f"could not install {' '.join(PACKAGES)} with apt-get (rc {result.returncode}): "
                f"{' '.join(last) or 'programs still missing'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> tuple[str, int, int]:
    """``slurmd -C``'s hardware (CPUs, topology, RealMemory) as a NodeName=localhost line."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=False).stdout
    fields = dict(f.split("=", 1) for f in out.split("\n", 1)[0].split() if "=" in f)
    try:
        cpus, memory = int(fields["CPUs"]), int(fields["RealMemory"])
    except (KeyError, ValueError):
        pytest.skip(f"slurmd -C did not describe this machine: {out.strip()!r}")
    hardware = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("NodeName", "UpTime"))
    return f"NodeName=localhost NodeHostname=localhost {hardware} State=UNKNOWN", cpus, memory


def _slurm_conf(root: Path, munge_socket: Path, node: str) -> str:
    return "\n".join([
        "ClusterName=surveydust-test",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",  # select/linear leaves the second job pending
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "KillWait=5",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        node,
        f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _wait(check, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def _ok(command: list[str], env: dict[str, str]) -> str | None:
    """stdout of ``command`` when it succeeds, else None."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _ours(marker: str) -> list[int]:
    """PIDs of processes whose environment holds ``marker`` (our SLURM_CONF): job steps, workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _stop(procs: list[subprocess.Popen], env: dict[str, str] | None) -> None:
    """Cancel our jobs, stop the daemons we started (last first), then any process left with our env."""
    if env is not None and procs:
        _ok([_which("scancel"), f"--partition={PARTITION}"], env)
        _wait(lambda: _ok([_which("squeue"), "-h"], env) in ("", None), 20)
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    if env is not None:
        for pid in _ours(f"SLURM_CONF={env['SLURM_CONF']}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A running single-node SLURM: ``.env`` (with SLURM_CONF) to talk to it, ``.memory_mb`` of its node."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a real SLURM is started on Linux only")
    if os.geteuid() != 0:
        pytest.skip("starting a real SLURM needs root (apt-get, munged as user munge, slurmd)")
    _install()
    node, cpus, memory = _node_line()
    if cpus < JOBS:
        pytest.skip(f"this machine has {cpus} CPU(s); the test runs {JOBS} one-core SLURM jobs at once")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    # munged runs as user munge, which cannot enter pytest's root-only tmp directory
    munge_dir = Path(tempfile.mkdtemp(prefix="surveydust-munge-"))
    procs: list[subprocess.Popen] = []
    env: dict[str, str] | None = None
    try:
        munge_dir.chmod(0o755)
        shutil.chown(munge_dir, "munge", "munge")
        as_munge = {"user": "munge", "group": "munge", "extra_groups": []}
        key, sock = munge_dir / "munge.key", munge_dir / "munge.socket"
        made = subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], capture_output=True,
                              text=True, timeout=30, **as_munge, check=False)
        if made.returncode != 0:
            pytest.skip(f"mungekey failed: {made.stderr.strip()}")
        log = munge_dir / "munged.log"
        procs.append(subprocess.Popen(
            [_which("munged"), "--foreground", f"--key-file={key}", f"--socket={sock}",
             f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={log}", f"--seed-file={munge_dir / 'seed'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_munge))
        if not _wait(lambda: _ok([_which("munge"), "-n", "-S", str(sock)], dict(os.environ)) is not None, 15):
            pytest.skip(f"munged did not come up within 15 s: {_tail(log)}")

        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, sock, node))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for name, command in (("slurmctld", [_which("slurmctld"), "-D"]),
                              ("slurmd", [_which("slurmd"), "-D", "-N", "localhost"])):
            with open(root / f"{name}.out", "w") as out:
                procs.append(subprocess.Popen(command, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT))

        def idle() -> bool:
            if any(p.poll() is not None for p in procs):
                return True  # one died: stop waiting
            return (_ok([_which("sinfo"), "-h", "-N", "-o", "%T"], env) or "").strip() == "idle"

        if not _wait(idle, START_TIMEOUT_S) or any(p.poll() is not None for p in procs):
            dead = [Path(p.args[0]).name for p in procs if p.poll() is not None]
            why = f"exited: {', '.join(dead)}" if dead else f"node not idle within {START_TIMEOUT_S:g} s"
            logs = "; ".join(_tail(root / f) for f in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out")
                             if (root / f).is_file() and (root / f).stat().st_size)
            pytest.skip(f"SLURM did not come up ({why}): {logs or 'no log'}")
        yield SimpleNamespace(env=env, memory_mb=memory)
    finally:
        _stop(procs, env)
        shutil.rmtree(munge_dir, ignore_errors=True)


def _slurm_profile(work: Path, memory_mb: int) -> dict:
    """The slurm profile sized for this one node: two 1-core jobs, workers on loopback."""
    return {
        "cores": 1,
        "memory": f"{min(4096, memory_mb // (JOBS + 1))}MiB",
        "processes": 1,
        "walltime": "00:15:00",
        "interface": "lo",  # scheduler and workers on 127.0.0.1
        "log_directory": str(work / "jobs"),
        "local_directory": str(work / "scratch"),
        "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
    }


def test_override_profile_job_script(tmp_path: Path) -> None:
    """The DASK_CONFIG overrides the real-SLURM test uses give the job script it relies on (no SLURM)."""
    profile = {**dask.config.get("surveydust.cluster.profiles.slurm"), **_slurm_profile(tmp_path, 20000)}
    with dask.config.set({"surveydust.cluster.profiles.slurm": profile}), make_cluster("slurm") as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --mem=4G", "#SBATCH -t 00:15:00",
                 f"#SBATCH -e {tmp_path / 'jobs'}/", "--interface lo", f"--local-directory {tmp_path / 'scratch'}",
                 "--nthreads 1"):
        assert line in script, line


@pytest.mark.slurm
def test_run_catalogue_on_real_slurm_matches_local_cluster(slurm, tmp_path: Path, client) -> None:
    store, _ = make_demo_field(tmp_path / "field", n_galaxies=20, size=512, seed=5, client=client, progress=False)
    work = tmp_path / "slurm-run"
    (work / "dask").mkdir(parents=True)
    profile = _slurm_profile(work, slurm.memory_mb)
    (work / "dask" / "surveydust.yaml").write_text(
        yaml.safe_dump({"surveydust": {"cluster": {"profiles": {"slurm": profile}}}}))
    env = {**slurm.env, "DASK_CONFIG": str(work / "dask")}
    exe = Path(sys.executable).with_name("surveydust")
    out = work / "cat.zarr"
    # --jobs 2 with processes: 1 is two workers (get_client refuses --workers together with --jobs).
    # It runs while the LocalCluster makes the reference: the SLURM jobs spend seconds starting up.
    with open(work / "stdout", "w") as stdout, open(work / "stderr", "w") as stderr:
        proc = subprocess.Popen([str(exe), "run-catalogue", str(store), "--out", str(out), "--cluster", "slurm",
                                 "--jobs", str(JOBS), "--quiet"], stdout=stdout, stderr=stderr, env=env, cwd=work)
    try:
        run_catalogue(store, tmp_path / "local.zarr", client=client, progress=False)
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:  # the fixture's finalizer cancels its jobs
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (work / "stderr").read_text()[-3000:]
    assert f"wrote {out}" in (work / "stdout").read_text()

    # both workers ran as SLURM jobs and reached the scheduler on loopback
    logs = sorted((work / "jobs").glob("dask-worker-*.err"))
    assert len(logs) == JOBS, logs
    for log in logs:
        assert "Registered to:      tcp://127.0.0.1:" in log.read_text(), log
    # closing the CLI's client cancelled its jobs
    assert _wait(lambda: _ok([_which("squeue"), "-h"], env) == "", 30), _ok([_which("squeue")], env)

    local, on_slurm = open_catalogue(tmp_path / "local.zarr"), open_catalogue(out)
    assert on_slurm.sizes == local.sizes and local.sizes["source"] > 0
    assert set(on_slurm.data_vars) == set(local.data_vars)
    for name in local.data_vars:
        np.testing.assert_array_equal(on_slurm[name].values, local[name].values, err_msg=name)


@pytest.mark.slurm
def test_a_job_the_batch_system_refuses_is_one_error_line(slurm, tmp_path: Path) -> None:
    """sbatch refuses the job (a partition that does not exist): one Error line naming the
    refusal, at once and non-zero, instead of waiting for workers that never come."""
    profile = {**_slurm_profile(tmp_path, slurm.memory_mb), "queue": "no-such-partition"}
    (tmp_path / "dask").mkdir()
    (tmp_path / "dask" / "surveydust.yaml").write_text(
        yaml.safe_dump({"surveydust": {"cluster": {"profiles": {"slurm": profile}}}}))
    exe = Path(sys.executable).with_name("surveydust")
    start = time.monotonic()
    done = subprocess.run([str(exe), "run-catalogue", "--demo", "--out", str(tmp_path / "demo" / "cat.zarr"),
                           "--cluster", "slurm", "--jobs", "1", "--quiet"], capture_output=True, text=True,
                          env={**slurm.env, "DASK_CONFIG": str(tmp_path / "dask")}, cwd=tmp_path, timeout=300,
                          check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "the batch system refused the job: sbatch failed:" in errors[0], errors[0]
    assert "partition" in errors[0].lower(), errors[0]
    assert time.monotonic() - start < 240
