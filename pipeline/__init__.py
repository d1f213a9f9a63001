"""unet-pipeline: exact overlap-tile U-Net segmentation of large microscopy volumes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unet-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
