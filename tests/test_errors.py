"""The package's own error (surveydust.errors.InputError) and the command line's policy: bad input
in one line, anything else (a bug) with its traceback and a request to report it."""

from __future__ import annotations

import click
import numpy as np
import pytest

from surveydust.cli import _friendly_errors
from surveydust.config import load_catalogue_config
from surveydust.errors import InputError
from surveydust.sources import check_redshifts


def test_bad_input_raises_the_packages_own_error() -> None:
    with pytest.raises(InputError, match="catalogue.threshold"):
        load_catalogue_config(threshold=-1)
    with pytest.raises(InputError):
        check_redshifts(np.array([7.0, -99.0]), 2)
    assert issubclass(InputError, ValueError)  # callers catching ValueError keep working


def test_the_cli_prints_input_errors_in_one_line() -> None:
    @_friendly_errors
    def command() -> None:
        raise InputError("the mosaic has no F277W\nsecond line never shown")

    with pytest.raises(click.ClickException) as info:
        command()
    assert info.value.message == "the mosaic has no F277W"


def test_the_cli_shows_a_bug_with_its_traceback_and_asks_for_a_report(capsys, monkeypatch) -> None:
    monkeypatch.delenv("SURVEYDUST_VERBOSE", raising=False)

    @_friendly_errors
    def command() -> None:
        np.zeros(3).reshape(2, 2)  # a ValueError from numpy: not the user's input, a bug

    with pytest.raises(SystemExit) as info:
        command()
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert "Traceback" in err and "reshape" in err and "please report it" in err
