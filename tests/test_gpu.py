"""The GPU path: runs given a GPU share train on CUDA, ensembles there equal their seeds alone, and a
sweep with fractional `gpus_per_run` packs several runs on one GPU through Ray.

Skipped where no CUDA GPU is visible (the CI machine, the 2-core development machine): run them on a
GPU machine with `bash benchmarks/gpu_check.sh`, which also runs the GPU benchmark and one `_gpu` study.
"""

from __future__ import annotations

import pytest
import torch

from scalesweep.train import pick_device, train_ensemble, train_one
from tests.conftest import cli, fast_spec, write_spec
from tests.test_ensemble import assert_same, by_run, configs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU is visible"),
]

CUDA = torch.device("cuda")


def with_resources(spec: str, gpus_per_run: float) -> str:
    """A fast spec whose runs ask for half a CPU and `gpus_per_run` GPUs each."""
    asked = f"resources: {{cpus_per_run: 0.5, gpus_per_run: {gpus_per_run}}}"
    return spec.replace("resources: {cpus_per_run: 0.5}", asked)


def test_a_run_given_a_gpu_share_trains_on_cuda():
    assert pick_device(0.25) == CUDA and pick_device(0.0) == torch.device("cpu")
    events = list(train_one(configs(seeds=(0,))[0], CUDA))
    assert events[-1]["kind"] == "summary", events[-1]
    rows = [row for e in events if e["kind"] == "metrics" for row in e["rows"]]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], "it learns on the GPU"


def test_an_ensemble_on_cuda_equals_each_seed_trained_alone_there():
    runs = configs(seeds=(0, 1, 2))
    together = by_run(train_ensemble(runs, CUDA))
    for run in runs:
        assert_same(by_run(train_one(run, CUDA))[run.run_key], together[run.run_key], rtol=1e-3)


@pytest.mark.slow
def test_a_sweep_packs_fractional_gpu_runs_on_one_gpu(workdir):
    # 8 seed ensembles of 2 seeds at a quarter GPU each: four on the GPU at once, every run finished.
    spec = write_spec(workdir, with_resources(fast_spec("gpu", widths=(4, 8), sizes=(20, 30, 35, 40), steps=50), 0.25))
    result = cli("run", str(spec), cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 finished, 0 failed" in result.stdout


def test_a_run_asking_for_more_gpus_than_any_node_has_is_refused(workdir):
    too_many = torch.cuda.device_count() + 1
    spec = write_spec(workdir, with_resources(fast_spec("too_many", widths=(4,), sizes=(20,)), too_many))
    result = cli("run", str(spec), cwd=workdir, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "GPUs" in result.stderr
