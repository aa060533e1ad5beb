"""surveydust: dust and sSFR of z > 6 galaxies from JWST NIRCam images with CNNs, on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("surveydust")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
