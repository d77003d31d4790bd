# Windows: dist\tlstudio (PyInstaller one-folder, CPU torch) smoke-tested, then an Inno Setup
# installer (packaging\windows\tlstudio.iss: Start-menu entry, icon, .tlsproj association,
# clean uninstall). Inno Setup 6 is preinstalled on GitHub's windows-2022 runners
# (else: choco install innosetup). Sign the .exe files to avoid SmartScreen warnings.
$ErrorActionPreference = "Stop"
Set-Location (Resolve-Path "$PSScriptRoot\..\..")
$version = (Select-String -Path pyproject.toml -Pattern '^version\s*=\s*"([^"]+)"').Matches[0].Groups[1].Value
py -3.11 -m venv build\pkgenv
$py = "build\pkgenv\Scripts\python.exe"
& $py -m pip install -q --upgrade pip
& $py -m pip install -q torch torchvision --index-url https://download.pytorch.org/whl/cpu
& $py -m pip install -q ".[export]" "pyinstaller>=6.3"
$env:QT_QPA_PLATFORM = "offscreen"
& $py packaging\render_icon.py --ico
& $py -m PyInstaller --noconfirm --distpath dist --workpath build\pyinstaller packaging\tlstudio.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
& $py packaging\smoke_test.py dist\tlstudio
if ($LASTEXITCODE -ne 0) { throw "smoke test failed" }
$iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe"
if (-not (Test-Path $iscc)) { choco install innosetup -y --no-progress; }
& $iscc "/DAppVersion=$version" packaging\windows\tlstudio.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
Get-Item "dist\TLStudio-$version-setup.exe"
