; Inno Setup 6 script: the TL Studio installer for Windows (built by packaging\ci\build_windows.ps1).
; Installs dist\tlstudio (the PyInstaller one-folder app) per machine, a Start-menu entry, the
; .tlsproj file association; the uninstaller removes the folder, the entry and the association.
#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif

[Setup]
AppId={{6B1E0C52-7F3A-4C4B-9E57-2D0B7A1F9C11}
AppName=TL Studio
AppVersion={#AppVersion}
AppPublisher=TL Studio developers
DefaultDirName={autopf}\TL Studio
DefaultGroupName=TL Studio
UninstallDisplayIcon={app}\tlstudio.exe
OutputDir=..\..\dist
OutputBaseFilename=TLStudio-{#AppVersion}-setup
SetupIconFile=..\..\resources\icons\tlstudio.ico
Compression=lzma2/max
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
ChangesAssociations=yes
WizardStyle=modern

[Files]
Source: "..\..\dist\tlstudio\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\TL Studio"; Filename: "{app}\tlstudio.exe"
Name: "{group}\Uninstall TL Studio"; Filename: "{uninstallexe}"

[Registry]
; .tlsproj -> TLStudio.Project, opened by "tlstudio.exe <file>"; removed again on uninstall
Root: HKA; Subkey: "Software\Classes\.tlsproj"; ValueType: string; ValueName: ""; ValueData: "TLStudio.Project"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\TLStudio.Project"; ValueType: string; ValueName: ""; ValueData: "TL Studio project"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\TLStudio.Project\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\tlstudio.exe,0"
Root: HKA; Subkey: "Software\Classes\TLStudio.Project\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\tlstudio.exe"" ""%1"""

[Run]
Filename: "{app}\tlstudio.exe"; Description: "Start TL Studio"; Flags: nowait postinstall skipifsilent
