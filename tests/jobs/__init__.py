"""The programs the tests start as child processes (scripts, torchrun jobs, spawned ranks).

``JOBS`` is this folder, so a test names a job as ``JOBS / "resume_job.py"`` wherever it lives.
"""

from pathlib import Path

JOBS = Path(__file__).parent
