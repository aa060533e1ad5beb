"""Pure image transforms: the dihedral group, the allowed sets, the extra-noise sigma and
the HOG picture, on small numpy arrays (no store, no Dask)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from surveydust.transforms import TRANSFORMS, allowed_transforms, apply_transform, extra_noise_sigma, hog_image


def test_transforms_are_the_dihedral_group() -> None:
    plane = np.arange(20.0).reshape(4, 5)
    np.testing.assert_array_equal(apply_transform(plane, 0), plane)
    np.testing.assert_array_equal(apply_transform(plane, 1), np.rot90(plane))
    np.testing.assert_array_equal(apply_transform(plane, 4), np.fliplr(plane))
    np.testing.assert_array_equal(apply_transform(plane, 5), np.rot90(np.fliplr(plane)))
    np.testing.assert_array_equal(apply_transform(plane, 6), np.flipud(plane))
    square = np.arange(16.0).reshape(4, 4)
    assert len({apply_transform(square, c).tobytes() for c in TRANSFORMS}) == 8
    cube = np.stack([square, -square])  # leading axes untouched
    np.testing.assert_array_equal(apply_transform(cube, 7)[1], -apply_transform(square, 7))
    with pytest.raises(ValueError, match="unknown transform code 8"):
        apply_transform(plane, 8)


def test_allowed_transforms() -> None:
    assert allowed_transforms(False, False).tolist() == [0]
    assert allowed_transforms(False, True).tolist() == [0, 4]
    assert allowed_transforms(True, False).tolist() == [0, 1, 2, 3]
    assert allowed_transforms(True, True).tolist() == list(range(8)) == sorted(TRANSFORMS)
    assert allowed_transforms(True, True).dtype == np.int8


def test_extra_noise_sigma() -> None:
    ds = xr.Dataset({"noise_sigma": ("band", [1.0, 2.0, 4.0])}, coords={"band": ["F277W", "F356W", "F444W"]})
    np.testing.assert_allclose(extra_noise_sigma(ds, ["F444W", "F277W"], 0.5, "s.zarr"), [2.0, 0.5])
    with pytest.warns(UserWarning, match="s.zarr records no noise_sigma"):
        assert extra_noise_sigma(ds.drop_vars("noise_sigma"), ["F277W"], 0.5, "s.zarr") is None


def test_hog_of_a_step_edge() -> None:
    # a vertical step edge: gradient along x, so only the cells on the edge light up,
    # with a vertical line (the edge direction)
    step = np.zeros((16, 16), np.float32)
    step[:, 8:] = 1.0
    pic = hog_image(step)
    assert pic.shape == step.shape and pic.dtype == np.float32
    assert pic[:, :4].sum() == 0 and pic[:, 12:].sum() == 0
    assert pic[:, 4:12].sum() > 0
    cell = pic[4:8, 4:8]
    assert cell[:, 1:3].sum() > 5 * (cell[:, 0].sum() + cell[:, 3].sum())
    # edges that do not fill a cell are padded, not dropped; leading axes are kept
    np.testing.assert_array_equal(hog_image(np.stack([step, step])[:, :14, :13])[0], hog_image(step[:14, :13]))
    assert hog_image(step[:14, :13]).shape == (14, 13)
