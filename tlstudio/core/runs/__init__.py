"""The run folder on disk (run.json, split, history) and project files."""
