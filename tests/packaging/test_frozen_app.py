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
DIST = Path(os.environ.get("TLSTUDIO_DIST", ROOT / "dist" / "tlstudio"))  # a bundle built elsewhere (clean clone)


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
    for f in ("build.sh", "build_deb.sh", "install-desktop.sh", "ci/build_macos.sh"):
        assert subprocess.run(["bash", "-n", str(PKG / f)]).returncode == 0, f
    spec = (PKG / "tlstudio.spec").read_text()
    assert '"resources"' in spec and "entry.py" in spec and "rthook_torchvision.py" in spec


def test_ci_workflow_builds_the_three_installers():
    """packaging/ci/build-installers.yml (GitHub Actions, not run here): one job per system, each
    calling a script of this repository that exists, and uploading the installer it makes."""
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((PKG / "ci" / "build-installers.yml").read_text(encoding="utf-8"))
    jobs = wf["jobs"]
    assert set(jobs) == {"linux-deb", "windows-installer", "macos-dmg"}
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    uploads = {name: [st["with"]["path"] for st in job["steps"] if st.get("uses", "").startswith("actions/upload")]
               for name, job in jobs.items()}
    assert "make package" in runs["linux-deb"] and "--deb" in runs["linux-deb"] and uploads["linux-deb"] == ["dist/*.deb"]
    assert "packaging/ci/build_windows.ps1" in runs["windows-installer"] and uploads["windows-installer"][0].endswith(".exe")
    assert "packaging/ci/build_macos.sh" in runs["macos-dmg"] and uploads["macos-dmg"][0].endswith(".dmg")
    for script in ("ci/build_windows.ps1", "ci/build_macos.sh", "windows/tlstudio.iss"):
        assert (PKG / script).is_file(), script
    ps1 = (PKG / "ci" / "build_windows.ps1").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in ps1 and "smoke_test.py" in ps1 and "tlstudio.iss" in ps1
    mac = (PKG / "ci" / "build_macos.sh").read_text(encoding="utf-8")
    assert "smoke_test.py" in mac and "hdiutil create" in mac and "iconutil" in mac


def test_windows_and_macos_installers_associate_tlsproj():
    iss = (PKG / "windows" / "tlstudio.iss").read_text(encoding="utf-8")
    assert r'Source: "..\..\dist\tlstudio\*"' in iss and "ChangesAssociations=yes" in iss
    lines = iss.splitlines()

    def line(subkey):
        (hit,) = [ln for ln in lines if f'Subkey: "Software\\Classes\\{subkey}";' in ln]
        return hit

    # the association is made on install and removed by the uninstaller
    assert 'ValueData: "TLStudio.Project"' in line(".tlsproj") and "uninsdeletevalue" in line(".tlsproj")
    assert "uninsdeletekey" in line("TLStudio.Project")
    assert r'ValueData: """{app}\tlstudio.exe"" ""%1"""' in line(r"TLStudio.Project\shell\open\command")
    spec = (PKG / "tlstudio.spec").read_text(encoding="utf-8")
    assert '"public.filename-extension": ["tlsproj"]' in spec and "CFBundleDocumentTypes" in spec


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
