"""The files of a run, for orchestrators (the Prefect flows in `pipelines/`) and notebooks.

- Atomic output: `atomic_path`, `write_json`, `write_text` (a file appears complete or not at
  all), `json_text` (non-finite numbers as null).
- Run folders: `run_directory` holds a folder's lock (`LOCK`) while a run writes into it and
  removes the temporary files (`TEMPORARY`) a killed writer left; `pid_alive`.
- Content digests: `file_digest` (SHA-256 of a file), `json_digest`, `Fingerprint`.
- Training checkpoints: `Checkpoint` (and `CheckpointError` when one is damaged).
"""

from ._checkpoint import Checkpoint, CheckpointError
from ._fingerprint import Fingerprint, file_digest, json_digest
from ._io import atomic_path, json_text, write_json, write_text
from ._rundir import LOCK, TEMPORARY, pid_alive, run_directory

__all__ = [
    "LOCK",
    "TEMPORARY",
    "Checkpoint",
    "CheckpointError",
    "Fingerprint",
    "atomic_path",
    "file_digest",
    "json_digest",
    "json_text",
    "pid_alive",
    "run_directory",
    "write_json",
    "write_text",
]
