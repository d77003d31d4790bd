"""The Qt-free engine: everything that scans, trains, evaluates or exports."""
