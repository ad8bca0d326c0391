"""Ray Jobs: run a whole sweep on a cluster, driver included.

`scalesweep submit` uploads the working directory (and the scalesweep package,
so that the cluster needs only its dependencies) and runs `scalesweep run`
there. The job's working directory is temporary, so the runs must go to a
tracking store the cluster can reach: a server, or a sqlite file by absolute
path on a filesystem the head node shares.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from scalesweep import uris
from scalesweep.errors import UserError, first_line

EXCLUDES = [".git", "mlflow.db", "mlartifacts", "reports", "*.pyc", "__pycache__", ".venv"]


def submit_job(spec_path: Path, *, address: str, tracking_uri: str | None) -> str:
    """Submit `scalesweep run SPEC` as a Ray Job; returns the job id."""
    relative_spec = _inside_working_dir(spec_path)
    uri = uris.job_uri(tracking_uri)
    client = _jobs_client(address)
    package = Path(__file__).resolve().parent
    entrypoint = shlex.join(["python", "-m", "scalesweep", "run", relative_spec.as_posix(), "--tracking-uri", uri])
    try:
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": ".", "py_modules": [str(package)], "excludes": EXCLUDES},
        )
    except Exception as err:  # the upload or the submission was refused
        raise UserError(f"the Ray Jobs API at {address} refused the job ({first_line(err)}).") from None


def _inside_working_dir(spec_path: Path) -> Path:
    """The spec as a path inside the uploaded working directory."""
    try:
        return spec_path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        raise UserError(
            f"{spec_path} is outside the working directory {Path.cwd()}, which is what a Ray Job uploads; "
            f"run `scalesweep submit` from a folder that contains the spec."
        ) from None


def _jobs_client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # unreachable dashboard: ConnectionError, ValueError...
        raise UserError(
            f"cannot reach the Ray Jobs API at {address} ({type(err).__name__}: {first_line(err)}). "
            f"Give the dashboard address of a running cluster, e.g. http://HEAD:8265 (`ray start --head` starts one)."
        ) from None
