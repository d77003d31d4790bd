"""Smoke-test a built bundle:  python packaging/smoke_test.py dist/tlstudio [--deb DEB [--system]]

Starts the frozen executable several times, offscreen, with a throw-away TLSTUDIO_HOME:
  --version      the interpreter, torch and the bundled resources load
  --mp-check     multiprocessing ("spawn" workers) works in the frozen app
  scan SAMPLE    the CLI runs on the bundled sample data set
  train, export  one tiny training epoch on the sample, then ONNX/TorchScript/int8 exports
  --smoke-test   the main window opens, loads the bundled sample, prints "SMOKE OK <classes> <images>"
With --deb: install the .deb into a private root (--system: into this machine, as root), check the
menu entry, icon and .tlsproj association, launch the installed command (--version, --smoke-test),
measure the installed size, uninstall and check that nothing is left.
Prints one line per check and the bundle size; exit code 0 only if every check passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


PROCESS_SCAN_FILES = 10_000  # tlstudio.core.data.probing.PROCESS_SCAN_MIN: from here scans use processes


def _tiny_pngs(root: Path, n: int) -> Path:
    """n distinct 8x8 PNGs in 2 class folders (a few seconds)."""
    from PIL import Image

    for i in range(n):
        d = root / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(d / f"{i:05d}.png")
    return root


def run_checks(dist: Path, timeout: float = 600) -> list[tuple[str, bool, str]]:
    dist = Path(dist).resolve()
    exe = dist / ("tlstudio.exe" if os.name == "nt" else "tlstudio")
    if not exe.exists():
        return [("bundle exists", False, f"{exe} not found")]
    sample = next((p for p in (dist / "_internal" / "resources" / "sample", dist / "resources" / "sample")
                   if p.is_dir()), None)
    checks: list[tuple[str, list[str], str]] = [
        ("version", ["--version"], "TL Studio"),
        ("multiprocessing", ["--mp-check"], "MP OK"),
    ]
    results = []
    with tempfile.TemporaryDirectory() as home:
        if sample is not None:
            run = str(Path(home) / "run")
            checks += [
                ("cli scan of the bundled sample", ["scan", str(sample)], ""),
                # torch + timm + the data pipeline inside the bundle: one tiny epoch, then the exports
                ("cli train (1 epoch, test_resnet, 48 px)",
                 ["train", str(sample), "--backbone", "test_resnet", "--scratch", "--epochs", "1",
                  "--image-size", "48", "--out", run], "finished"),
                ("cli export (onnx, torchscript, int8, card)",
                 ["export", run, "--format", "onnx", "--format", "torchscript", "--format", "int8"],
                 "max abs diff"),
            ]
        # big folders are scanned in spawned worker processes: they must start inside the bundle
        many = _tiny_pngs(Path(home) / "many", PROCESS_SCAN_FILES)
        checks.append((f"cli scan of {PROCESS_SCAN_FILES:,} images (worker processes)", ["scan", str(many)],
                       f"{PROCESS_SCAN_FILES} images"))
        checks.append(("GUI smoke test (offscreen)", ["--smoke-test"], "SMOKE OK"))
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TLSTUDIO_HOME=home, HF_HUB_OFFLINE="1")
        env.pop("PYTHONPATH", None)
        for name, args, expect in checks:
            if name.startswith("GUI"):
                env["TLSTUDIO_SMOKE"] = "1"
            t0 = time.time()
            try:
                p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                                   env=env, cwd=home)
                out = (p.stdout or "") + (p.stderr or "")
                ok = p.returncode == 0 and (expect in out)
                line = next((ln for ln in out.splitlines() if expect and expect in ln), "")
                detail = f"exit {p.returncode}, {time.time() - t0:.1f} s" + (f": {line.strip()}" if line else "")
                if not ok:
                    detail += "\n    " + "\n    ".join(out.strip().splitlines()[-15:])
            except subprocess.TimeoutExpired:
                ok, detail = False, f"timed out after {timeout:.0f} s"
            results.append((name, ok, detail))
    return results


# --------------------------------------------------------------------------- the .deb
MIME_TYPE = "application/x-tlstudio-project"
CUDA_MARKERS = ("libcudnn", "libcublas", "libnccl", "libcusparse", "libcufft", "libtorch_cuda", "/nvidia/")


def _tree(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Every path under root (files, links, folders) relative to it, except those under `skip`."""
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if not rel.startswith(skip):
            out.add(rel)
    return out


def _dpkg(args: list[str], root: Path | None) -> subprocess.CompletedProcess:
    """dpkg on the real system (root=None) or into a private root (no root rights needed there)."""
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    extra = [] if root is None else [f"--root={root}", "--force-not-root", "--force-depends",
                                     "--force-script-chrootless", f"--log={root / 'dpkg.log'}"]
    return subprocess.run(["dpkg", *extra, *args], capture_output=True, text=True, env=env, timeout=900)


def _desktop_entry(path: Path) -> dict[str, str]:
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    return dict(cp["Desktop Entry"])


def deb_checks(deb: Path, launches: list[tuple[str, list[str], str]] | None = None, *, system: bool = False,
               timeout: float = 600) -> tuple[list[tuple[str, bool, str]], dict]:
    """Install the .deb, check what it put where, launch the installed command, uninstall, check nothing
    is left. system=False installs into a private root with `dpkg --root` (no root rights, the machine
    untouched); system=True uses the real dpkg database (root only; the real desktop caches update through
    the triggers of shared-mime-info & co.). Returns (checks, facts: installed_bytes, files ...)."""
    import shutil
    import xml.etree.ElementTree as ET

    deb = Path(deb).resolve()
    launches = launches if launches is not None else [("installed --version", ["--version"], "TL Studio")]
    results: list[tuple[str, bool, str]] = []
    facts: dict = {"deb_bytes": deb.stat().st_size}

    def check(name: str, ok: bool, detail: str = "") -> bool:
        results.append((name, bool(ok), detail))
        return bool(ok)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = None if system else tmp / "root"
        base = Path("/") if system else root
        if root is not None:
            for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
                (root / d).mkdir(parents=True)
            (root / "var/lib/dpkg/status").touch()
        before = None if system else _tree(root)
        p = _dpkg(["-i", str(deb)], root)
        if not check("dpkg -i", p.returncode == 0, (p.stdout + p.stderr).strip()[-800:]):
            return results, facts
        listed = [ln for ln in _dpkg(["-L", "tlstudio"], root).stdout.splitlines() if ln.startswith("/")]
        files = [base / ln.lstrip("/") for ln in listed]
        real_files = [f for f in files if f.is_file() and not f.is_symlink()]
        facts["installed_bytes"] = sum(f.stat().st_size for f in real_files)
        facts["files"] = len(real_files)
        cuda = [ln for ln in listed if any(m in ln for m in CUDA_MARKERS)]
        check("installed size", facts["installed_bytes"] > 0,
              f"{facts['installed_bytes'] / 1e6:.0f} MB in {len(real_files)} files (.deb {facts['deb_bytes'] / 1e6:.0f} MB)")
        check("no CUDA libraries installed", not cuda, ", ".join(cuda[:5]))

        # desktop integration: menu entry, icon, the .tlsproj association
        app = base / "usr/share/applications/tlstudio.desktop"
        mime_xml = base / "usr/share/mime/packages/tlstudio.xml"
        entry = _desktop_entry(app) if app.is_file() else {}
        check("desktop entry", entry.get("Exec", "").split()[:1] == ["tlstudio"] and entry.get("Icon") == "tlstudio",
              str(app))
        icons = [base / "usr/share/icons/hicolor/256x256/apps/tlstudio.png",
                 base / "usr/share/icons/hicolor/scalable/apps/tlstudio.svg"]
        check("icon installed", all(i.is_file() and i.stat().st_size > 0 for i in icons), ", ".join(map(str, icons)))
        types, globs = set(), set()
        if mime_xml.is_file():
            ns = "{http://www.freedesktop.org/standards/shared-mime-info}"
            for mt in ET.parse(mime_xml).getroot().iter(f"{ns}mime-type"):
                types.add(mt.get("type"))
                globs |= {g.get("pattern") for g in mt.iter(f"{ns}glob")}
        mimes = {m for m in entry.get("MimeType", "").split(";") if m}
        check(".tlsproj association (desktop MimeType = shared-mime-info type)",
              types == {MIME_TYPE} and "*.tlsproj" in globs and MIME_TYPE in mimes, f"{types} {globs} {mimes}")
        if shutil.which("update-mime-database"):  # the database the trigger builds: does *.tlsproj map to us?
            if system:
                db = Path("/usr/share/mime")
            else:
                db = tmp / "mime"
                shutil.copytree(base / "usr/share/mime/packages", db / "packages")
                subprocess.run(["update-mime-database", str(db)], capture_output=True, timeout=120)
            globs2 = (db / "globs2").read_text(encoding="utf-8") if (db / "globs2").is_file() else ""
            check("mime database maps *.tlsproj", f"{MIME_TYPE}:*.tlsproj" in globs2, str(db / "globs2"))

        # launch the installed command through /usr/bin/tlstudio (a relative link into /opt/tlstudio)
        exe = base / "usr/bin/tlstudio"
        check("/usr/bin/tlstudio -> /opt/tlstudio/tlstudio",
              exe.is_symlink() and exe.resolve() == (base / "opt/tlstudio/tlstudio").resolve(), os.readlink(exe)
              if exe.is_symlink() else "missing")
        home = tmp / "home"
        home.mkdir()
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TLSTUDIO_HOME=str(home), HF_HUB_OFFLINE="1",
                   HOME=str(home))
        env.pop("PYTHONPATH", None)
        for name, args, expect in launches:
            args = [a.replace("{root}", str(base).rstrip("/")) for a in args]  # paths inside the install root
            t0 = time.time()
            try:
                r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env,
                                   cwd=str(home))
                out = (r.stdout or "") + (r.stderr or "")
                line = next((ln.strip() for ln in out.splitlines() if expect in ln), "")
                check(name, r.returncode == 0 and bool(line),
                      f"exit {r.returncode}, {time.time() - t0:.1f} s: {line or out.strip()[-600:]}")
            except subprocess.TimeoutExpired:
                check(name, False, f"timed out after {timeout:.0f} s")

        p = _dpkg(["-r", "tlstudio"], root)
        check("dpkg -r", p.returncode == 0, (p.stdout + p.stderr).strip()[-800:])
        # files and links of ours, and our own folders; folders shared with the system (/usr ...) stay
        left = [str(f) for f in files if (f.is_symlink() or f.exists()) and (not f.is_dir() or "tlstudio" in f.name)]
        if not system:  # the private root is back to what it was, apart from dpkg's own records
            left += sorted(_tree(root, skip=("var/lib/dpkg", "dpkg.log")) - before)
        check("uninstall leaves nothing behind", not left, ", ".join(left[:10]))
        if shutil.which("update-mime-database") and system:
            globs2 = Path("/usr/share/mime/globs2").read_text(encoding="utf-8")
            check("mime database forgets *.tlsproj", f"{MIME_TYPE}:*.tlsproj" not in globs2, "/usr/share/mime/globs2")
    return results, facts


def main(argv: list[str]) -> int:
    args = list(argv)
    deb = system = None
    if "--deb" in args:
        i = args.index("--deb")
        deb = Path(args[i + 1])
        del args[i : i + 2]
    if "--system" in args:
        system = True
        args.remove("--system")
    dist = Path(args[0] if args else "dist/tlstudio").resolve()
    results = run_checks(dist)
    if deb is not None:
        launches = [("installed --version", ["--version"], "TL Studio"),
                    ("installed GUI smoke test (offscreen)", ["--smoke-test"], "SMOKE OK")]
        launches.insert(1, ("installed cli scan of the bundled sample",
                            ["scan", "{root}/opt/tlstudio/_internal/resources/sample"], "cross"))
        deb_results, facts = deb_checks(deb, launches, system=bool(system))
        results += [(f"deb: {n}", ok, d) for n, ok, d in deb_results]
    for name, ok, detail in results:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if dist.exists():
        print(f"bundle size: {_size(dist) / 1e6:.0f} MB ({dist})")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
