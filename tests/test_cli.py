"""The ``surveydust`` console script, run as a user would (real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr

# tests/test_infer.py still imports ``run`` from here; remove once it takes the console_script fixture

FIXTURE = Path(__file__).parent / "data" / "skirt"


def test_help_lists_commands(console_script) -> None:
    result = console_script("--help")
    assert result.returncode == 0
    for command in ("simulate", "ingest-sims", "plot-store"):
        assert command in result.stdout
    sim_help = console_script("simulate", "--help").stdout
    assert "--n-galaxies" in sim_help and "--cluster" in sim_help and "nJy" in console_script("--help").stdout


def test_simulate_end_to_end(tmp_path: Path, console_script) -> None:
    out = tmp_path / "sims.zarr"
    result = console_script("simulate", "--out", str(out), "--n-galaxies", "2", "--views", "1",
                 "--workers", "1", "--seed", "7", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Dask dashboard: http://127.0.0.1:" in result.stderr
    ds = xr.open_zarr(out)
    assert ds.sizes["sample"] == 2 * 1 * 11 and ds.attrs["seed"] == 7
    for png in ("labels.png", "stamps.png"):
        data = (tmp_path / "sims_plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_ingest_sims_end_to_end(tmp_path: Path, console_script) -> None:
    out = tmp_path / "skirt.zarr"
    cubes = sorted(str(p) for p in FIXTURE.glob("*.fits"))
    result = console_script("ingest-sims", *cubes, "--properties", str(FIXTURE / "properties.csv"),
                 "--out", str(out), "--bands", "F277W,F356W,F444W", "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    ds = xr.open_zarr(out)
    assert [str(b) for b in ds["band"].values] == ["F277W", "F356W", "F444W"]
    assert console_script("plot-store", str(out)).returncode == 0
    assert (tmp_path / "skirt_plots" / "labels.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--n-galaxies", "-3"], "n_galaxies: Input should be greater than 0"),
        (["simulate", "--bands", "F277W,F999W"], "unknown band(s) ['F999W']"),
        (["simulate", "--set", "dtm_values=[0, 1.5]"], "dust-to-metal ratios must lie in [0, 1]"),
        (["simulate", "--set", "redshift_range=[6, 14]"], "blueward of Lyman-alpha"),
        (["simulate", "--workers", "0"], "workers must be an integer >= 1"),
        (["simulate", "--cluster", "nosuch"], "unknown cluster profile"),
    ],
)
def test_bad_input_one_line_nonzero(tmp_path: Path, args: list[str], message: str, console_script) -> None:
    result = console_script(*args[:1], "--out", str(tmp_path / "x.zarr"), *args[1:])
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_existing_output_refused(tmp_path: Path, console_script) -> None:
    out = tmp_path / "exists.zarr"
    out.mkdir()
    result = console_script("simulate", "--out", str(out))
    assert result.returncode == 1 and "--overwrite" in result.stderr


def test_bad_cube_one_line(tmp_path: Path, console_script) -> None:
    bad = tmp_path / "900001_i0_a0_z7_NIRCam_long.fits"
    bad.write_text("not a FITS file")
    result = console_script("ingest-sims", str(bad), "--properties", str(FIXTURE / "properties.csv"),
                 "--out", str(tmp_path / "s.zarr"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Error:" in result.stderr


def test_train_and_evaluate_end_to_end(tmp_path: Path, client, console_script) -> None:
    from surveydust.simulate import simulate

    store = simulate(tmp_path / "s.zarr", client=client, progress=False, n_galaxies=20, views_per_galaxy=1)
    bundle = tmp_path / "model"
    result = console_script("train", "--store", str(store), "--bands", "F277W", "--out", str(bundle),
                 "--max-epochs", "1", "--set", "snr_min=0", "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["bands"] == ["F277W"] and meta["epochs_run"] == 1
    assert meta["format_version"] == 3 and meta["uses_redshift"] and meta["split"]["protocol"] == "galaxy"
    assert set(meta["calibration"]) >= {"with_redshift", "without_redshift"}
    result = console_script("evaluate", str(bundle), str(store), "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAE" in result.stdout and (tmp_path / "eval" / "table.ecsv").is_file()
    assert (tmp_path / "eval" / "bias_by_av.ecsv").is_file()
    from astropy.table import Table

    models = Table.read(tmp_path / "eval" / "table.ecsv").colnames[3:]
    # the z model with and without z, the colour+z baseline, Meurer (the store has F115W-F200W)
    assert models == ["CNN F277W +z", "CNN F277W no z", "baseline (colours) +z", "Meurer (UV slope)"]
    bad = console_script("train", "--store", str(store), "--bands", "F090W", "--out", str(tmp_path / "m2"))
    assert bad.returncode == 1 and "no band(s) ['F090W']" in bad.stderr


def test_tune_bad_input_is_one_line_error(tmp_path: Path, one_band_store: Path, console_script) -> None:
    store = one_band_store
    for args, message in ((["--trials", "0"], "tuning.trials"),
                          (["--bands", "F444W"], "F444W"),
                          (["--search-space", str(tmp_path / "none.yaml")], "does not exist")):
        result = console_script("tune", "--store", str(store), "--out", str(tmp_path / "study"), *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("Error:") and message in result.stderr, result.stderr
    assert "Table 1" in console_script("tune", "--help").stdout
