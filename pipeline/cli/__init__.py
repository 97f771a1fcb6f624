"""The operator's interface behind `run.py`: commands, status, preview, the demo, and how the console prints."""
