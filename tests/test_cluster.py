"""Tests of surveydust.cluster: real LocalClusters and real dask-jobqueue objects, no mocks."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator

import dask.config
import pytest
from distributed import Client, LocalCluster
from distributed.core import Status

from surveydust.cluster import (
    ClusterClient,
    get_client,
    make_cluster,
    open_client,
    profile_settings,
    worker_resources,
)

# Keeps jobqueue test schedulers on loopback and off port 8787.
QUIET_SCHEDULER = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
# A fast in-process local profile for tests that do not need worker processes.
THREADS = {"processes": False, "n_workers": 1}


@pytest.fixture(scope="module")
def scheduler() -> Iterator[LocalCluster]:
    """A separately started cluster whose scheduler the address profile connects to."""
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster


def test_defaults_are_in_dask_config() -> None:
    assert dask.config.get("surveydust.cluster.default") == "local"
    profiles = dask.config.get("surveydust.cluster.profiles")
    assert {p: profiles[p]["kind"] for p in ("local", "address", "slurm", "pbs")} == {
        "local": "local",
        "address": "address",
        "slurm": "slurm",
        "pbs": "pbs",
    }
    assert profiles["local"]["host"] == "127.0.0.1"


def test_local_profile_gives_working_client(capfd: pytest.CaptureFixture[str]) -> None:
    with get_client("local", workers=2, resources={"GPU": 1}) as client:
        assert isinstance(client, ClusterClient)
        cluster = client.cluster
        client.wait_for_workers(2, timeout=30)
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        assert all(r == {"GPU": 1.0} for r in worker_resources(client).values())
        # numpy temporaries stay on the heap in workers (Dask's trim setting would mmap each one)
        env = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")})
        assert all(e == {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "65536"}
                   for e in env.values()), env
        link = client.dashboard_link
    err = capfd.readouterr().err
    assert f"Dask dashboard: {link}" in err
    assert link.startswith("http://127.0.0.1:")
    assert client.status == "closed"
    assert cluster.status == Status.closed


def test_default_profile_and_user_profile_from_config() -> None:
    tiny = {"kind": "local", "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **THREADS}
    settings = {"surveydust.cluster.profiles.tiny": tiny, "surveydust.cluster.default": "tiny"}
    with dask.config.set(settings):
        client = get_client()
        cluster = client.cluster
        assert len(client.scheduler_info()["workers"]) == 1
        client.close()
    assert cluster.status == Status.closed


def test_address_profile_connects_to_running_scheduler(scheduler: LocalCluster) -> None:
    with get_client(address=scheduler.scheduler_address) as client:
        assert type(client) is Client
        assert client.submit(lambda x: x + 1, 1).result(timeout=10) == 2
    with get_client("address", address=scheduler.scheduler_address, timeout="5s") as client:
        assert len(client.scheduler_info()["workers"]) == 1
    assert scheduler.status == Status.running  # disconnecting leaves the scheduler alone


def test_open_client_owns_only_what_it_creates(scheduler: LocalCluster) -> None:
    with Client(scheduler) as mine:
        with open_client(mine) as c:
            assert c is mine
        assert mine.status == "running"
        with pytest.warns(UserWarning, match="workers"), open_client(mine, workers=3) as c:
            assert c is mine
    with open_client(profile="local", host="127.0.0.1", **THREADS) as c:
        created = c
        cluster = c.cluster
    assert created.status == "closed"
    assert cluster.status == Status.closed


def test_unknown_profile() -> None:
    message = r"unknown cluster profile 'nope'; known profiles: .*local.*slurm"
    with pytest.raises(ValueError, match=message):
        get_client("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, r"workers must be an integer >= 1, got 0"),
        ({"profile": "slurm", "jobs": 0}, r"jobs must be an integer >= 1, got 0"),
        ({"jobs": 2}, r"jobs= applies to slurm/pbs profiles"),
        ({"profile": "slurm", "workers": 2, "jobs": 2}, r"workers= or jobs=, not both"),
        ({"profile": "address"}, r"cluster profile 'address' needs an 'address'"),
        (
            {"profile": "local", "address": "tcp://127.0.0.1:9"},
            r"address= needs an address profile",
        ),
        ({"bogus_option": 1}, r"cluster profile 'local': unknown setting\(s\) bogus_option"),
        (
            {"profile": "slurm", "bogus_option": 1},
            r"cluster profile 'slurm': unknown setting\(s\) bogus_option",
        ),
        ({"profile": "slurm", "jobs": 0.5}, r"jobs must be an integer"),
    ],
)
def test_bad_settings_raise_one_line_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        get_client(**kwargs)
    assert "\n" not in str(info.value)


def test_profile_without_kind_or_with_unknown_kind() -> None:
    with dask.config.set({"surveydust.cluster.profiles.nokind": {"n_workers": 1}}):
        message = r"profile 'nokind' has no 'kind' \(one of: local, local-gpu, address, slurm, pbs\)"
        with pytest.raises(ValueError, match=message):
            get_client("nokind")
    with dask.config.set({"surveydust.cluster.profiles.odd": {"kind": "kubernetes"}}), \
            pytest.raises(ValueError, match=r"profile 'odd' has unknown kind 'kubernetes'"):
        make_cluster("odd")


def test_unreachable_scheduler_fails_within_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        get_client(address="tcp://127.0.0.1:9", timeout="2s")
    elapsed = time.monotonic() - start
    assert str(info.value) == "could not reach a Dask scheduler at tcp://127.0.0.1:9 within 2s"
    assert elapsed < 8


def test_make_cluster_refuses_address_profile() -> None:
    with pytest.raises(ValueError, match="use get_client"):
        make_cluster("address")


def test_slurm_job_script() -> None:
    cluster = make_cluster(
        "slurm",
        cores=2,
        memory="4GiB",
        walltime="00:10:00",
        queue="gpu",
        account="proj42",
        job_extra_directives=["--gres=gpu:1"],
        worker_resources={"GPU": 1},
        scheduler_options=QUIET_SCHEDULER,
    )
    try:
        script = cluster.job_script()
        assert cluster.status == Status.running and not cluster.workers  # nothing submitted
    finally:
        cluster.close()
    for line in (
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4G",
        "#SBATCH -t 00:10:00",
        "#SBATCH -p gpu",
        "#SBATCH -A proj42",
        "#SBATCH --gres=gpu:1",
    ):
        assert line in script
    assert "--nthreads 2" in script
    assert "--resources GPU=1" in script


def test_pbs_job_script_and_no_resources_by_default() -> None:
    with make_cluster(
        "pbs", cores=3, memory="6GiB", walltime="02:00:00", scheduler_options=QUIET_SCHEDULER
    ) as cluster:
        script = cluster.job_script()
    assert "#PBS -l select=1:ncpus=3:mem=6144MB" in script
    assert "#PBS -l walltime=02:00:00" in script
    assert "--resources" not in script
    resources = {"GPU": 2, "MEM": 8}
    with make_cluster("pbs", worker_resources=resources, scheduler_options=QUIET_SCHEDULER) as c:
        assert "--resources GPU=2,MEM=8" in c.job_script()


def test_custom_site_profile_from_dask_config() -> None:
    mysite = {
        "kind": "slurm",
        "cores": 8,
        "memory": "64GiB",
        "processes": 1,
        "walltime": "04:00:00",
        "queue": "a100",
        "worker_resources": {"GPU": 1},
        "jobs": 4,
        "scheduler_options": QUIET_SCHEDULER,
    }
    with dask.config.set({"surveydust.cluster.profiles.mysite": mysite}):
        assert profile_settings("mysite")[1]["jobs"] == 4
        with make_cluster("mysite") as cluster:
            script = cluster.job_script()
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH -p a100" in script
    assert "#SBATCH -t 04:00:00" in script
    assert "--resources GPU=1" in script


def test_environment_and_hyphenated_user_keys_override_defaults() -> None:
    env = dask.config.collect_env({"DASK_SURVEYDUST__CLUSTER__PROFILES__SLURM__CORES": "7"})
    user_file = {"surveydust": {"cluster": {"profiles": {"local": {"n-workers": 3}}}}}
    merged = copy.deepcopy(dask.config.config)
    dask.config.update(merged, env)
    dask.config.update(merged, user_file)
    with dask.config.set({"surveydust": merged["surveydust"]}):
        assert profile_settings("slurm")[1]["cores"] == 7
        local = profile_settings("local")[1]
        assert local["n_workers"] == 3
        assert local["threads_per_worker"] == 1  # untouched defaults survive


def test_local_tls_profile_encrypts_client_scheduler_and_workers() -> None:
    with get_client("local-tls", workers=1) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(w.startswith("tls://127.0.0.1:") for w in client.scheduler_info()["workers"])
        assert client.submit(sum, [1, 2]).result() == 3


def test_slurm_tls_profile_passes_certificates_to_workers(tmp_path) -> None:
    cluster = make_cluster("slurm-tls", shared_temp_directory=str(tmp_path))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "--protocol tls://" in script and "--tls-ca-file" in script and "--tls-key" in script


def test_local_gpu_profile_pins_one_worker_per_gpu(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two visible devices (no CUDA work is done)
    with get_client("local-gpu") as client:
        pinned = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(pinned.values()) == ["0", "1"]
        assert all(r == {"GPU": 1.0} for r in worker_resources(client).values())
    with pytest.raises(ValueError, match="3 GPU workers asked for, but only 2 GPU"):
        get_client("local-gpu", workers=3)


def test_local_gpu_profile_falls_back_to_cpu_workers_with_a_warning(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.warns(UserWarning, match="no NVIDIA GPU is visible"):
        client = get_client("local-gpu", workers=1)
    with client:
        assert worker_resources(client) and not any(worker_resources(client).values())


def test_pbs_job_script_gpu_directives_and_resources() -> None:
    with make_cluster(
        "pbs",
        cores=2,
        memory="8GiB",
        walltime="00:30:00",
        queue="gpuq",
        job_extra_directives=["-l ngpus=1"],
        worker_resources={"GPU": 1},
        scheduler_options=QUIET_SCHEDULER,
    ) as cluster:
        script = cluster.job_script()
    for line in (
        "#PBS -l select=1:ncpus=2:mem=8192MB",
        "#PBS -l walltime=00:30:00",
        "#PBS -q gpuq",
        "#PBS -l ngpus=1",
    ):
        assert line in script, line
    assert "--nthreads 2" in script and "--resources GPU=1" in script


def test_task_stream_is_recorded_from_the_start() -> None:
    with get_client("local", workers=1) as client:
        client.submit(sum, [1, 2], key="early-task").result()
        names = {t["key"] for t in client.get_task_stream(start=0)}
        assert "early-task" in names  # recorded before any dashboard page was opened


def _listener(junk: bytes | None) -> int:
    """A TCP port that accepts connections and then says nothing (``junk`` None) or junk."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            if junk:
                conn.sendall(junk)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize("junk, message", [(None, "no Dask scheduler answered at .* within 2s"),
                                           (b"\xff" * 64, "did not answer as a Dask scheduler")])
def test_an_address_that_is_not_a_scheduler_fails_in_bounded_time(junk, message) -> None:
    """An open port that is not Dask: one ValueError within the timeout (+ grace), no hang."""
    port = _listener(junk)
    with pytest.raises(ValueError, match=message):
        get_client("address", address=f"tcp://127.0.0.1:{port}", timeout="2s")
