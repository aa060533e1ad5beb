"""Distributed hyper-parameter search: real Optuna study, real Dask workers, real Keras trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from astropy.table import Table

from surveydust.config import load_training_config, load_tuning_config
from surveydust.tune import JOURNAL_FILE, STUDY_NAME, suggest_training, tune

# Tiny trials: one or two conv blocks of 4-8 filters, two epochs.
SPACE = {"conv_layers": {"low": 1, "high": 2}, "conv_filters": {"low": 4, "high": 8},
         "dense_units": {"low": 4, "high": 8},
         "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"low": 32, "high": 64}}
BANDS = ["F277W", "F356W", "F444W"]  # training_store's (the training default is the six wide bands)
# 4 of the 12 non-test galaxies calibrate the percentiles: >= 20 samples (the minimum)
TRAINING = {"snr_min": 0, "bands": BANDS, "calibration_fraction": 0.3, "model": {"dense_units": [8, 8]}}
SPACE_YAML = """tuning:
  startup_trials: 2
  search_space:
    conv_layers: {low: 1, high: 2}
    conv_filters: {low: 4, high: 8}
    dense_units: {low: 4, high: 8}
    learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
    batch_size: {low: 32, high: 64}
"""


@pytest.fixture(scope="module")
def store(training_store: Path) -> Path:
    return training_store


def _tune(store: Path, out: Path, client, trials: int, **overrides):
    return tune(store, out, client=client, progress=False, trials=trials, max_epochs=2, startup_trials=2,
                search_space=SPACE, training_overrides=TRAINING, **overrides)


def _journal(out: Path) -> optuna.Study:
    from surveydust.tune import _storage

    return optuna.load_study(study_name=STUDY_NAME, storage=_storage(out))


@pytest.mark.parametrize(("override", "message"), [
    ({"trials": 0}, "tuning.trials"),
    ({"search_space": {"conv_layers": {"low": 3, "high": 2}}}, "empty or inverted range"),
    ({"search_space": {"conv_filters": {"low": 8, "high": 8}}}, "empty or inverted range"),
    ({"search_space": {"kernel_size": {"low": 3, "high": 5}}}, "unknown parameter(s) ['kernel_size']"),
    ({"search_space": {"conv_layers": {"low": 1, "high": 7}}}, "outside [1, 4]"),
    ({"search_space": {"batch_size": {"low": 16.5, "high": 64}}}, "integer bounds"),
    ({"search_space": {}}, "tuning.search_space"),
])
def test_bad_search_space_is_one_line_error(override, message) -> None:
    with pytest.raises(ValueError) as err:
        load_tuning_config(**override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_search_space_is_the_papers_table_1() -> None:
    space = load_tuning_config().search_space
    assert (space["conv_filters"].low, space["conv_filters"].high) == (4, 64)
    assert (space["conv_layers"].low, space["conv_layers"].high) == (1, 4)
    assert (space["dense_units"].low, space["dense_units"].high) == (8, 64)
    assert (space["learning_rate"].low, space["learning_rate"].high) == (1e-4, 1e-2)
    assert (space["batch_size"].low, space["batch_size"].high) == (16, 64)


def test_suggestions_stay_in_the_space_and_each_layer_draws_its_own() -> None:
    tuning = load_tuning_config()
    cfg = load_training_config(patience=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    widths = set()
    for _ in range(20):
        trial = study.ask()
        out = suggest_training(trial, tuning, cfg)
        n_conv, n_dense = trial.params["conv_layers"], trial.params["dense_layers"]
        assert len(out.model.conv_filters) == n_conv and len(out.model.dense_units) == n_dense
        assert all(4 <= f <= 64 for f in out.model.conv_filters)
        assert all(8 <= u <= 64 for u in out.model.dense_units)
        assert 1e-4 <= out.learning_rate <= 1e-2 and 16 <= out.batch_size <= 64
        assert out.patience == 3 and out.bands == cfg.bands  # not searched: kept
        widths.add(len(set(out.model.conv_filters)))
        study.tell(trial, 0.0)
    assert max(widths) > 1  # layers are not forced to share one value


def test_tune_runs_trials_on_both_workers_and_resumes(store: Path, tmp_path: Path, client) -> None:
    out = tmp_path / "study"
    table = _tune(store, out, client, trials=4)
    assert len(table) == 4 and set(table["state"]) == {"complete"}
    assert len(set(table["worker"])) == 2
    first = {w: table[table["worker"] == w] for w in set(table["worker"])}
    a, b = (min(rows["start"]) for rows in first.values())
    ends = {w: min(rows["end"]) for w, rows in first.items()}
    assert max(a, b) < min(ends.values())  # the first trials on the two workers overlapped in time
    for name in ("trials.ecsv", "loss.png", "importance.png", "best-training.yaml"):
        assert (out / name).is_file(), name
    best = table[np.argmin(table["value"])]
    from surveydust.bundle import load_model

    predictor = load_model(out / "best-model")
    images = np.random.default_rng(0).random((3, 3, 32, 32)).astype(np.float32)
    assert predictor.bands == tuple(BANDS) and predictor.uses_redshift
    pred = predictor.predict(images, 7.0)
    assert np.isfinite(pred["A_V"].values).all() and (pred["A_V"].values >= 0).all()
    assert predictor.meta["tuning"]["trial"] == best["trial"]
    assert "calibration" in predictor.meta and predictor.meta["split"]["protocol"] == "galaxy"

    # Resume, pruning against five planted excellent trials (the median of all trials is one of
    # them): every new trial is stopped after its first epoch.
    study = _journal(out)
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(
            params=study.best_trial.params, distributions=study.best_trial.distributions, value=-1e9,
            intermediate_values={0: -1e9, 1: -1e9}))
    table = _tune(store, out, client, trials=11, pruner_startup_trials=1, warmup_epochs=0)
    assert len(table) == 11 and len(set(table["trial"])) == 11
    assert (table["state"] == "pruned").sum() == 2
    assert set(table[table["state"] == "pruned"]["epochs"]) == {1}
    assert Table.read(out / "trials.ecsv").colnames == table.colnames

    with pytest.raises(ValueError, match="another search space"):
        tune(store, out, client=client, progress=False, trials=8, search_space={"batch_size": SPACE["batch_size"]},
             training_overrides=TRAINING)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("surveydust")
    return subprocess.Popen([str(exe), "tune", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kwargs)


def test_killed_run_resumes_without_lost_or_repeated_trials(store: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    args = ["--store", str(store), "--out", str(tmp_path / "study"), "--trials", "4", "--max-epochs", "2",
            "--search-space", str(space), "--bands", ",".join(BANDS), "--set", "snr_min=0",
            "--set", "calibration_fraction=0.3", "--set", "model.dense_units=[8, 8]",
            "--workers", "2", "--pruner", "none", "--quiet"]
    proc = _cli(*args)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        journal = tmp_path / "study" / JOURNAL_FILE
        if journal.is_file() and any(t.state.is_finished() for t in _journal(tmp_path / "study").trials):
            break
    assert proc.poll() is None, proc.stdout.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the command, its scheduler and its workers
    proc.wait()
    before = _journal(tmp_path / "study").trials
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in before)  # killed mid-trial

    again = _cli(*args)
    output, _ = again.communicate(timeout=400)
    assert again.returncode == 0, output[-3000:]
    table = Table.read(tmp_path / "study" / "trials.ecsv")
    assert len(table) == 4 and len(set(table["trial"])) == 4 and set(table["state"]) == {"complete"}
    assert "queued again" in output


def test_trial_whose_worker_dies_is_rerun(store: Path, tmp_path: Path, kill_worker) -> None:
    from surveydust.cluster import get_client

    with get_client("local", workers=2) as c:
        killer = kill_worker(c, "tune-trial-", delay_s=3.0)
        table = _tune(store, tmp_path / "study", c, trials=3, pruner="none")
        assert killer.result(timeout=60)  # a trial's worker was killed mid-trial
    assert len(table) == 3 and set(table["state"]) <= {"complete", "fail"}
