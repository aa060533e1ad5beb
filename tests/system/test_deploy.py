"""deploy/: the example site profiles build the batch scripts they promise; the driver scripts parse."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dask.config
import pytest
import yaml

from surveydust.cluster import make_cluster

pytestmark = pytest.mark.system

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def site_profiles():
    profiles = yaml.safe_load((DEPLOY / "site-profiles.yaml").read_text())["surveydust"]["cluster"]["profiles"]
    with dask.config.set({f"surveydust.cluster.profiles.{k}": v for k, v in profiles.items()}):
        yield profiles


def _job_script(profile: str, logs: Path) -> str:
    # interface ib0 does not exist here: bind the test scheduler to loopback; logs in a temp folder
    cluster = make_cluster(profile, interface="lo", scheduler_options={"dashboard_address": "127.0.0.1:0"},
                           log_directory=str(logs))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def test_gpu_slurm_profile_asks_for_one_gpu_per_worker(site_profiles, tmp_path: Path) -> None:
    script = _job_script("gpu-slurm", tmp_path)
    for line in ("#SBATCH --gres=gpu:1", "#SBATCH -p gpu", "#SBATCH -A myproject", "#SBATCH -t 04:00:00",
                 "#SBATCH --cpus-per-task=8", "module load cuda", "export KERAS_BACKEND=jax"):
        assert line in script, line
    assert "--resources GPU=1" in script and "--nworkers" not in script  # one worker per job


def test_cpu_slurm_profile_runs_several_workers_per_job(site_profiles, tmp_path: Path) -> None:
    script = _job_script("cpu-slurm", tmp_path)
    assert "#SBATCH -p compute" in script and "--nworkers 8" in script
    assert "--resources" not in script


def test_gpu_pbs_profile(site_profiles, tmp_path: Path) -> None:
    script = _job_script("gpu-pbs", tmp_path)
    for line in ("#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB", "#PBS -q gpu", "#PBS -A myproject",
                 "#PBS -l walltime=04:00:00"):
        assert line in script, line
    assert "--resources GPU=1" in script


@pytest.mark.parametrize("name", ["run-catalogue.slurm", "run-catalogue.pbs"])
def test_driver_scripts_parse_and_use_existing_profiles(name: str, site_profiles) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    path = DEPLOY / name
    assert subprocess.run([bash, "-n", str(path)], capture_output=True, check=False).returncode == 0
    text = path.read_text()
    profile = re.search(r"SURVEYDUST_PROFILE:-([\w-]+)", text).group(1)
    assert profile in site_profiles
    assert "surveydust run-catalogue" in text and "--cluster" in text and "--jobs" in text


def test_container_recipe_installs_the_package() -> None:
    text = (DEPLOY / "surveydust.def").read_text()
    assert text.startswith("#") and "Bootstrap: docker" in text
    assert 'pip install --no-cache-dir "/opt/surveydust' in text
