"""TL Studio: no-code transfer learning on images."""

__version__ = "0.1.0"
