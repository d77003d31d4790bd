"""Render resources/icons/tlstudio.svg to PNG (and .ico) with Qt's SVG renderer, offscreen.

    python packaging/render_icon.py            # writes resources/icons/tlstudio.png (256 px)
Pillow then turns the PNG into tlstudio.ico for Windows builds when asked (--ico).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def render(svg: Path, png: Path, size: int = 256) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 - needed by QPainter
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    QSvgRenderer(str(svg)).render(painter)
    painter.end()
    if not img.save(str(png)):
        raise SystemExit(f"{png}: could not write")


def main(argv: list[str]) -> int:
    svg, png = ICONS / "tlstudio.svg", ICONS / "tlstudio.png"
    render(svg, png)
    print(f"{png} {png.stat().st_size} bytes")
    if "--ico" in argv:
        from PIL import Image

        ico = png.with_suffix(".ico")
        Image.open(png).save(ico, sizes=[(16, 16), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
        print(f"{ico} {ico.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
