"""The thin PySide6 layer over tlstudio.core."""
