"""Packaging: the recipe's files are sound (fast), and the built bundle starts (slow).

The bundle tests run when dist/tlstudio exists (after `make package`), or build it first when
TLSTUDIO_BUILD_BUNDLE=1 (several minutes); otherwise they are skipped.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
DIST = ROOT / "dist" / "tlstudio"


def test_icon_svg_and_png():
    from PIL import Image

    svg = ET.parse(ROOT / "resources" / "icons" / "tlstudio.svg").getroot()
    assert svg.tag.endswith("svg") and svg.get("viewBox") == "0 0 256 256"
    png = ROOT / "resources" / "icons" / "tlstudio.png"
    assert png.stat().st_size < 50_000
    with Image.open(png) as im:
        assert im.size == (256, 256) and im.mode in ("RGBA", "RGB")
        assert len(im.convert("RGB").resize((16, 16)).getcolors(256) or []) > 8  # really drawn, not blank


def test_desktop_entry():
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(PKG / "tlstudio.desktop", encoding="utf-8")
    e = cp["Desktop Entry"]
    assert e["Type"] == "Application" and e["Name"] == "TL Studio"
    assert e["Exec"].startswith("tlstudio") and e["Icon"] == "tlstudio"
    assert e["Categories"].endswith(";")


def test_spec_and_scripts_are_valid():
    compile((PKG / "tlstudio.spec").read_text(), "tlstudio.spec", "exec")
    for f in ("entry.py", "smoke_test.py", "rthook_torchvision.py", "render_icon.py"):
        compile((PKG / f).read_text(), f, "exec")
    for f in ("build.sh", "install-desktop.sh"):
        assert subprocess.run(["bash", "-n", str(PKG / f)]).returncode == 0
    spec = (PKG / "tlstudio.spec").read_text()
    assert '"resources"' in spec and "entry.py" in spec and "rthook_torchvision.py" in spec


def test_entry_multiprocessing_check_unfrozen():
    """The --mp-check the frozen app runs, here in a plain interpreter (spawn workers)."""
    p = subprocess.run([sys.executable, str(PKG / "entry.py"), "--mp-check"], capture_output=True, text=True,
                       timeout=120, cwd=str(ROOT))
    assert p.returncode == 0 and "MP OK 8" in p.stdout, p.stderr


@pytest.fixture(scope="module")
def bundle():
    if os.environ.get("TLSTUDIO_BUILD_BUNDLE") == "1":
        subprocess.run(["bash", str(PKG / "build.sh")], check=True, cwd=str(ROOT),
                       env=dict(os.environ, SKIP_SMOKE="1"), timeout=3600)
    exe = DIST / ("tlstudio.exe" if os.name == "nt" else "tlstudio")
    if not exe.exists():
        pytest.skip("no bundle in dist/tlstudio (run `make package` or set TLSTUDIO_BUILD_BUNDLE=1)")
    return DIST


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_frozen_app_smoke(bundle):
    sys.path.insert(0, str(PKG))
    try:
        from smoke_test import run_checks
    finally:
        sys.path.remove(str(PKG))
    results = run_checks(bundle, timeout=600)
    failed = [f"{name}: {detail}" for name, ok, detail in results if not ok]
    assert not failed, "\n".join(failed)
    names = {name for name, _, _ in results}
    assert {"version", "multiprocessing", "GUI smoke test (offscreen)"} <= names
