"""What a run leaves on disk and shows on the terminal: the run directory and its lock (run_dir.py), checkpoint
folders (checkpoints.py), files renamed into place when complete (atomic_io.py), metrics loggers (loggers.py),
the console (console.py) and the machine a result was measured on (machine.py)."""
