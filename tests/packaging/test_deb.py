"""The Linux installer (.deb) and the install size.

Fast (every run, when dpkg is there): packaging/build_deb.sh wraps a stand-in bundle (a shell
script as `tlstudio`) and smoke_test.deb_checks installs it into a private dpkg root, checks the
menu entry, icon and .tlsproj association, launches the installed command, uninstalls it and finds
nothing left. Slow (only when a real .deb was built by `make package`): the same on the real bundle,
with the installed size measured and the GUI smoke test of the installed app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
DIST = Path(os.environ.get("TLSTUDIO_DIST", ROOT / "dist" / "tlstudio"))

sys.path.insert(0, str(PKG))
try:
    import measure_env
    import smoke_test
finally:
    sys.path.remove(str(PKG))

needs_dpkg = pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("dpkg")),
                                reason="dpkg/dpkg-deb not installed (not a Debian-like system)")

STAND_IN = """#!/bin/sh
# stand-in for the PyInstaller executable: answers --version, litters its own folder on --litter
case "$1" in
  --version) echo "TL Studio 0.0.1 stand-in";;
  --litter) touch "$(dirname "$(readlink -f "$0")")/written-by-the-app.log"; echo "littered";;
  *) echo "unknown $*"; exit 3;;
esac
"""


def _stand_in_deb(tmp_path: Path, version: str = "0.0.1") -> Path:
    bundle = tmp_path / "bundle" / "tlstudio"
    (bundle / "_internal" / "resources").mkdir(parents=True)
    (bundle / "_internal" / "resources" / "catalog.json").write_text("{}", encoding="utf-8")
    exe = bundle / "tlstudio"
    exe.write_text(STAND_IN, encoding="utf-8")
    exe.chmod(0o755)
    (bundle / "install-desktop.sh").write_text("# per-user installer: not for the .deb\n", encoding="utf-8")
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(PKG / "build_deb.sh"), str(bundle), str(out)], capture_output=True, text=True,
                       env=dict(os.environ, DEB_VERSION=version), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    debs = list(out.glob("*.deb"))
    assert [d.name for d in debs] == [f"tlstudio_{version}_{_arch()}.deb"]
    return debs[0]


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


def _failed(results):
    return [f"{n}: {d}" for n, ok, d in results if not ok]


def test_mime_type_and_desktop_entry_agree():
    ns = "{http://www.freedesktop.org/standards/shared-mime-info}"
    root = ET.parse(PKG / "tlstudio-mime.xml").getroot()
    (mt,) = root.iter(f"{ns}mime-type")
    assert mt.get("type") == smoke_test.MIME_TYPE
    assert [g.get("pattern") for g in mt.iter(f"{ns}glob")] == ["*.tlsproj"]
    entry = smoke_test._desktop_entry(PKG / "tlstudio.desktop")
    assert smoke_test.MIME_TYPE in entry["MimeType"].split(";")
    assert entry["Exec"] == "tlstudio %f"  # the app opens the one project file it is given


@needs_dpkg
def test_deb_installs_launches_and_uninstalls_cleanly(tmp_path):
    deb = _stand_in_deb(tmp_path)
    info = subprocess.run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Depends"], capture_output=True,
                          text=True).stdout
    assert "Package: tlstudio" in info and "Version: 0.0.1" in info and "libc6" in info
    contents = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True).stdout
    assert contents.splitlines()[0].startswith("drwxr-xr-x root/root") and contents.split()[5] == "./"
    assert "./opt/tlstudio/_internal/resources/catalog.json" in contents
    assert "install-desktop.sh" not in contents  # the per-user installer stays out of the system package
    results, facts = smoke_test.deb_checks(deb, [("installed --version", ["--version"], "TL Studio 0.0.1")])
    assert _failed(results) == []
    names = [n for n, _, _ in results]
    for must in ("dpkg -i", "desktop entry", "icon installed", ".tlsproj association (desktop MimeType = "
                 "shared-mime-info type)", "installed --version", "dpkg -r", "uninstall leaves nothing behind"):
        assert must in names
    # bundle (exe + catalog) + .desktop + mime XML + 2 icons + copyright
    assert facts["files"] == 7 and facts["installed_bytes"] > 20_000
    assert facts["deb_bytes"] == deb.stat().st_size


@needs_dpkg
def test_uninstall_check_catches_what_dpkg_leaves(tmp_path):
    """An app that writes into its install folder leaves it behind on dpkg -r: the check must say so."""
    deb = _stand_in_deb(tmp_path)
    results, _ = smoke_test.deb_checks(deb, [("litter", ["--litter"], "littered")])
    failed = _failed(results)
    assert len(failed) == 1 and failed[0].startswith("uninstall leaves nothing behind")
    assert "opt/tlstudio" in failed[0]


@needs_dpkg
def test_a_launch_that_fails_is_reported(tmp_path):
    deb = _stand_in_deb(tmp_path)
    results, _ = smoke_test.deb_checks(deb, [("bad flag", ["--nope"], "TL Studio")])
    assert [n for n, ok, _ in results if not ok] == ["bad flag"]
    assert "exit 3" in dict((n, d) for n, _, d in results)["bad flag"]


def test_measure_env_counts_gpu_only_libraries(tmp_path):
    """A fake venv: sizes set by hand, so the expected totals are known without the function."""
    sp = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    files = {
        "nvidia/cublas/lib/libcublas.so.13": 3_000_000,
        "triton/_C/libtriton.so": 1_000_000,
        "torch/lib/libtorch_cuda.so": 2_000_000,
        "torch/lib/libtorch_cpu.so": 5_000_000,
        "torch/__init__.py": 1_000,
        "PySide6/QtCore.abi3.so": 400_000,
        "nvidia_cublas-13.1.dist-info/RECORD": 500,
    }
    for rel, size in files.items():
        p = sp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.truncate(size)
    (tmp_path / "venv" / "lib64").symlink_to("lib")  # as venv makes it: must not be counted twice
    m = measure_env.measure(tmp_path / "venv")
    assert m["total"] == sum(files.values())
    assert m["cuda"] == 3_000_000 + 1_000_000 + 2_000_000
    assert m["packages"]["torch"] == 5_001_000 + 2_000_000 and m["packages"]["PySide6"] == 400_000
    assert "GPU-only" in measure_env.report(tmp_path / "venv")


@pytest.fixture(scope="module")
def real_deb():
    debs = sorted(DIST.parent.glob("tlstudio_*.deb"))
    if not debs or not shutil.which("dpkg"):
        pytest.skip(f"no .deb next to {DIST} (run `make package`)")
    return debs[-1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_deb_install_launch_uninstall(real_deb, tmp_path):
    """The .deb `make package` built: installed into a private root, the installed app answers --version,
    scans the bundled sample from the command line and opens its main window offscreen; it is CPU-only
    (no CUDA libraries) and its installed size is measured; dpkg -r leaves nothing."""
    launches = [("installed --version", ["--version"], "TL Studio"),
                ("installed cli scan of the bundled sample", ["scan", "{root}/opt/tlstudio/_internal/resources/sample"],
                 "cross"),
                ("installed GUI smoke test (offscreen)", ["--smoke-test"], "SMOKE OK")]
    results, facts = smoke_test.deb_checks(real_deb, launches, timeout=600)
    print(f"installed: {facts.get('installed_bytes', 0) / 1e6:.0f} MB in {facts.get('files')} files; "
          f".deb {facts['deb_bytes'] / 1e6:.0f} MB")
    assert _failed(results) == [], "\n".join(_failed(results))
    assert 100e6 < facts["installed_bytes"] < 2.5e9  # a CPU bundle: far below the 6 GB of a CUDA venv
