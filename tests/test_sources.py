"""Input tables: column names, masked redshifts, the redshift cross-match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from surveydust.sources import match_redshifts, redshift_table

ARCSEC = 1.0 / 3600.0


def _write(tmp_path: Path, name: str, table: Table) -> Path:
    path = tmp_path / name
    table.write(path, format="ascii.csv" if path.suffix == ".csv" else None)
    return path


def test_redshift_table_finds_columns_and_drops_missing_z(tmp_path: Path) -> None:
    z = MaskedColumn([6.1, 7.2, 8.3], mask=[False, True, False], name="Z_SPEC")
    rows = Table([[10.0, 10.001, 10.002], [2.0, 2.0, 2.0], z], names=["RA", "DEC", "Z_SPEC"])
    path = _write(tmp_path, "dja.ecsv", rows)
    table = redshift_table(path)
    np.testing.assert_array_equal(table["z"], [6.1, 8.3])
    np.testing.assert_array_equal(table["ra"], [10.0, 10.002])


def test_uv_slopes_come_with_the_redshifts(tmp_path: Path) -> None:
    path = tmp_path / "specz.csv"
    path.write_text("ra,dec,z,beta_uv,e_beta\n10.0,2.0,7.1,-2.1,0.1\n10.001,2.0,6.5,,\n")
    table = redshift_table(path)
    np.testing.assert_array_equal(table["beta_input"], [-2.1, np.nan])
    matched = match_redshifts(np.array([10.001, 10.0]), np.array([2.0, 2.0]), table, radius_arcsec=0.2)
    np.testing.assert_array_equal(matched["z"], [6.5, 7.1])
    np.testing.assert_array_equal(matched["beta_input_err"], [np.nan, 0.1])


def test_empty_z_in_csv_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "specz.csv"
    path.write_text("ra,dec,redshift\n10.0,2.0,\n10.001,2.0,6.5\n")
    np.testing.assert_array_equal(redshift_table(path)["z"], [6.5])


def test_nearest_entry_within_radius(tmp_path: Path) -> None:
    cos = np.cos(np.deg2rad(2.0))
    table = {"ra": np.array([10.0, 10.0 + 1.0 * ARCSEC / cos]), "dec": np.array([2.0, 2.0]), "z": np.array([6.0, 7.0])}
    ra = np.array([10.0 + 0.1 * ARCSEC / cos, 10.0 + 0.95 * ARCSEC / cos, 10.0 + 5 * ARCSEC / cos])
    matched = match_redshifts(ra, np.full(3, 2.0), table, radius_arcsec=0.2)
    z, sep = matched["z"], matched["sep"]
    np.testing.assert_allclose(z[:2], [6.0, 7.0])
    np.testing.assert_allclose(sep[:2], [0.1, 0.05], atol=1e-6)
    assert np.isnan(z[2]) and np.isnan(sep[2])  # 4" from the nearest entry: no redshift


def test_bad_tables_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="redshifts file .* does not exist"):
        redshift_table(tmp_path / "missing.csv")
    no_rows = tmp_path / "empty.csv"
    no_rows.write_text("ra,dec,z\n10.0,2.0,\n")
    with pytest.raises(ValueError, match="no row with a finite RA, Dec and redshift"):
        redshift_table(no_rows)
    text = tmp_path / "text.csv"
    text.write_text("ra,dec,z\n10.0,2.0,high\n")
    with pytest.raises(ValueError, match="redshift column 'z' is not numeric"):
        redshift_table(text)
