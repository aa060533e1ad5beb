"""The Python API called again and again, and runs that start wrong or are interrupted
(issue 22, items 5 and 6): real LocalClusters, the real console script, real signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import xarray as xr
from dask.system import CPU_COUNT
from distributed.core import Status

import surveydust
from surveydust.cluster import get_client

EXE = Path(sys.executable).with_name("surveydust")
SCHEDULERS: list = []  # filled by a scheduler preload (test_ctrl_c_while_the_cluster_starts_...)


def test_api_functions_stay_callable_after_their_submodules_are_imported() -> None:
    import surveydust.simulate.field  # the submodules first, as a notebook might
    import surveydust.train
    import surveydust.tune

    assert surveydust.__all__ == ["__version__", *sorted(surveydust._API)]
    for name, module in surveydust._API.items():
        for _ in range(2):
            function = getattr(surveydust, name)
            assert callable(function) and not isinstance(function, ModuleType), name
            assert function is getattr(sys.modules[module], name), name
    from surveydust import train, tune

    assert train is sys.modules["surveydust.train"].train and tune is sys.modules["surveydust.tune"].tune
    assert surveydust.sedfit.fit_sed.__name__ == "fit_sed"  # documented, reached without an import
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        surveydust.nosuch  # noqa: B018


def test_api_lookups_in_a_fresh_interpreter() -> None:
    """First lookup, then the submodule import, then lookups again (the order that used to break)."""
    script = (
        "import json, types, surveydust\n"
        "first = [callable(getattr(surveydust, n)) for n in ('simulate', 'train', 'tune')]\n"
        "import surveydust.train, surveydust.tune, surveydust.simulate.run\n"
        "again = [getattr(surveydust, n) for n in ('simulate', 'train', 'tune') for _ in range(2)]\n"
        "print(json.dumps([first, [type(f).__name__ for f in again]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    first, again = json.loads(result.stdout.splitlines()[-1])
    assert first == [True] * 3 and again == ["function"] * 6


def test_simulate_twice_in_one_process(tmp_path: Path, client) -> None:
    paths = [surveydust.simulate(tmp_path / f"s{k}.zarr", client=client, progress=False, n_galaxies=2,
                                 views_per_galaxy=1, seed=k) for k in range(2)]
    stores = [xr.open_zarr(path) for path in paths]
    assert [ds.attrs["seed"] for ds in stores] == [0, 1]
    assert stores[0].sizes["sample"] == stores[1].sizes["sample"] > 0


def test_workers_above_the_cores_are_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    asked = CPU_COUNT + 3
    with caplog.at_level(logging.WARNING, logger="surveydust.cluster"), \
            get_client("local", workers=asked, processes=False) as client:
        client.wait_for_workers(CPU_COUNT, timeout=60)
        started = len(client.scheduler_info(n_workers=-1)["workers"])
    assert started == CPU_COUNT
    warnings = [r.getMessage() for r in caplog.records if r.name == "surveydust.cluster"]
    assert len(warnings) == 1 and f"{asked} workers asked for" in warnings[0], warnings
    assert f"starting {CPU_COUNT}" in warnings[0] and "\n" not in warnings[0]


def test_workers_within_the_cores_are_not_capped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="surveydust.cluster"), \
            get_client("local", workers=1, processes=False) as client:
        assert len(client.scheduler_info()["workers"]) == 1
    assert not [r for r in caplog.records if r.name == "surveydust.cluster"]


def _sigint_ignored() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_local_worker_processes_leave_ctrl_c_to_the_client() -> None:
    """Through the API too (a script run in a terminal): the worker processes ignore SIGINT, the
    client process keeps its handler."""
    handler = signal.getsignal(signal.SIGINT)
    with get_client("local", workers=1) as client:
        assert list(client.run(_sigint_ignored).values()) == [True]
    assert signal.getsignal(signal.SIGINT) is handler and handler is not signal.SIG_IGN


def test_ctrl_c_while_the_cluster_starts_closes_it_then_interrupts() -> None:
    """The scheduler's preload sends this process SIGINT half-way through the cluster's start: the
    interrupt waits until the cluster is up, which is then closed, and arrives as KeyboardInterrupt."""
    interrupt = ("import os, signal, test_runs_api\n"
                 "def dask_setup(scheduler):\n"
                 "    test_runs_api.SCHEDULERS.append(scheduler)\n"
                 "    os.kill(os.getpid(), signal.SIGINT)\n")
    handler = signal.getsignal(signal.SIGINT)
    SCHEDULERS.clear()
    with pytest.raises(KeyboardInterrupt):
        get_client("local", workers=1, processes=False, scheduler_kwargs={"preload": [interrupt]})
    assert len(SCHEDULERS) == 1 and SCHEDULERS[0].status == Status.closed
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize(("profile", "command"), [("slurm", "sbatch"), ("pbs", "qsub")])
def test_batch_profile_without_its_submit_command_fails_in_one_line(
        profile: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no batch system here
    message = f"cluster profile '{profile}' submits .* with {command}, which is not on PATH"
    with pytest.raises(ValueError, match=message) as info:
        get_client(profile)
    assert "\n" not in str(info.value)


def test_cli_slurm_without_sbatch_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "sims.zarr"
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run([str(EXE), "simulate", "--out", str(out), "--n-galaxies", "2", "--cluster", "slurm"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        ("Error: cluster profile 'slurm' submits SLURM jobs with sbatch, which is not on PATH "
         "(run on a login node of the cluster, or use --cluster local)")], result.stderr[-3000:]
    assert not out.exists()


def _interrupt(args: list[str], under_way: Callable[[subprocess.Popen], bool]) -> tuple[int, str]:
    """Run the console script with ``args`` in a process group of its own and, once
    ``under_way(process)``, send the group SIGINT, as Ctrl-C in a terminal does (to the command,
    its scheduler and its workers). Returns the exit code and the stderr not read by ``under_way``;
    a group still there at the end (a failed test) is killed."""
    proc = subprocess.Popen([str(EXE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert under_way(proc), proc.communicate(timeout=300)[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_to_the_process_group_ends_in_one_line(tmp_path: Path) -> None:
    args = ["simulate", "--out", str(tmp_path / "sims.zarr"), "--n-galaxies", "400", "--workers",
            str(min(2, CPU_COUNT)), "--no-plots", "--quiet"]
    # the dashboard line comes once the cluster is up; the simulation is submitted right after
    code, err = _interrupt(args, lambda proc: proc.stderr.readline().startswith("Dask dashboard: "))
    assert code == 130, err[-3000:]
    assert err.splitlines() == ["interrupted: nothing half-written was kept"], err[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def small_field(tmp_path_factory: pytest.TempPathFactory, client) -> Path:
    from surveydust.demo import make_demo_field

    store, _ = make_demo_field(tmp_path_factory.mktemp("field"), n_galaxies=12, size=384, seed=5, client=client,
                               progress=False)
    return store


@pytest.mark.slow  # a catalogue run started, interrupted and re-run: about a minute on 2 cores
def test_ctrl_c_to_the_process_group_ends_in_one_line_and_the_run_resumes(small_field: Path, tmp_path: Path) -> None:
    out = tmp_path / "cat.zarr"
    args = ["run-catalogue", str(small_field), "--out", str(out), "--workers", "1", "--set", "tile_pix=128", "--quiet"]
    parts = tmp_path / ".cat.zarr.parts"

    def first_tile_done(proc: subprocess.Popen) -> bool:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not list(parts.glob("part-*.npz")):
            time.sleep(0.1)
        return proc.poll() is None

    code, err = _interrupt(args, first_tile_done)
    assert code == 130, err[-3000:]
    lines = err.splitlines()  # the run's own lines ("model: ...", "9 tiles of ..."), then one for the interrupt
    assert lines[-1] == ("interrupted: finished tiles are kept, re-run the same command to resume; "
                         "nothing half-written was kept"), err[-3000:]
    noise = ("interrupted", "Traceback", "KeyboardInterrupt", "Error", "WARNING", "Warning", "distributed.")
    assert not [line for line in lines[:-1] if any(word in line for word in noise)], err[-3000:]
    kept = len(list(parts.glob("part-*.npz")))
    assert kept >= 1 and not out.exists()
    again = subprocess.run([str(EXE), *(a for a in args if a != "--quiet")], capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"({kept} done before)" in again.stderr
    assert out.is_dir() and not parts.exists()
