"""Each task's data has the properties its docstring states."""

from __future__ import annotations

import itertools

import pytest
import torch

from scalesweep.errors import UserError
from scalesweep.zoo import TASKS
from scalesweep.zoo.base import IGNORE, load
from scalesweep.zoo.tasks import teacher


def make(task: str, data_size: int, seed: int = 0, **params):
    info = TASKS[task]
    return info.make(info.params_model(**params), data_size, seed)


def rows(x: torch.Tensor) -> set[tuple]:
    return {tuple(r) for r in x.tolist()}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_documents_itself_and_is_deterministic(name):
    info = TASKS[name]
    assert info.known_for and load(info.generator).__doc__
    state = torch.random.get_rng_state()
    a, b, c = make(name, 50, seed=1), make(name, 50, seed=1), make(name, 50, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state), "a task must not move the global RNG"
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) == len(a.y_train) == 50 and len(a.x_test) == len(a.y_test)


SHAPE_CASES = [(name, {}) for name in sorted(TASKS)] + [
    ("modular_arithmetic", {"p": 11, "op": "/"}),
    ("sparse_parity", {"n_bits": 9, "k": 2, "n_test": 100}),
    ("teacher_student", {"input_dim": 5, "output_dim": 3}),
    ("superposition", {"n_features": 7}),
    ("in_context", {"vocab": 12, "seq_len": 16, "span": 4}),
]


@pytest.mark.parametrize(("name", "params"), SHAPE_CASES)
def test_the_declared_data_shape_is_the_generated_one(name, params):
    """Planning reads a task's shape from its parameters (no torch); it must be what its data has."""
    info = TASKS[name]
    assert info.shape_of is not None, "every built-in task declares its shape"
    assert info.shape_of(info.params_model(**params)) == make(name, 8, **params).shape


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_modular_arithmetic_size_limit_leaves_one_pair_to_test_on(op):
    limit = TASKS["modular_arithmetic"].max_data_size(TASKS["modular_arithmetic"].params_model(p=7, op=op))
    assert len(make("modular_arithmetic", limit, p=7, op=op).x_test) == 1
    with pytest.raises(UserError, match="data_size"):
        make("modular_arithmetic", limit + 1, p=7, op=op)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_modular_arithmetic_labels_and_split(op):
    p = 7
    data = make("modular_arithmetic", 20, p=p, op=op)
    x, y = torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])
    a, b = x[:, 0], x[:, 1]
    expected = {"+": (a + b) % p, "-": (a - b) % p, "*": (a * b) % p, "/": None}[op]
    if op == "/":
        assert (b != 0).all() and torch.equal((y * b) % p, a)
    else:
        assert torch.equal(y, expected)
    assert len(x) == (p * (p - 1) if op == "/" else p * p)
    assert not rows(data.x_train) & rows(data.x_test) and len(rows(x)) == len(x)


def test_modular_arithmetic_refuses_a_split_without_test_pairs():
    with pytest.raises(UserError, match="data_size"):
        make("modular_arithmetic", 49, p=7)


def test_sparse_parity_labels_are_a_k_bit_parity():
    data = make("sparse_parity", 100, n_bits=8, k=3, n_test=50)
    x, y = torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])
    assert set(x.unique().tolist()) == {-1.0, 1.0} and data.shape.input_dim == 8
    bits = (x < 0).long()
    fits = [s for s in itertools.combinations(range(8), 3) if torch.equal(bits[:, list(s)].sum(1) % 2, y)]
    assert len(fits) == 1, "exactly one set of 3 hidden bits explains every label"
    assert not rows(data.x_train) & rows(data.x_test) and len(rows(x)) == 150


def test_sparse_parity_bad_params():
    with pytest.raises(UserError, match="distinct inputs"):
        make("sparse_parity", 200, n_bits=6, k=2, n_test=10)
    with pytest.raises(UserError, match="k <= n_bits"):
        make("sparse_parity", 10, n_bits=4, k=5, n_test=1)


def test_teacher_student_teacher_is_fixed_and_noise_is_on_train_only():
    params = TASKS["teacher_student"].params_model(input_dim=4, label_noise=0.5, n_test=500)
    a, b = (
        make("teacher_student", 2000, seed=0, **params.model_dump()),
        make("teacher_student", 10, seed=1, **params.model_dump()),
    )
    with torch.no_grad():
        f = teacher(params)
        assert torch.allclose(a.y_test, f(a.x_test)) and torch.allclose(b.y_test, f(b.x_test))
        noise = a.y_train - f(a.x_train)
    assert abs(noise.std().item() - 0.5) < 0.05
    assert a.y_test.std() > 0.1, "the teacher's outputs are not degenerate"


def test_superposition_features_are_sparse_and_weighted():
    data = make("superposition", 4000, n_features=10, sparsity=0.8, importance_decay=0.5, n_test=10)
    x = data.x_train
    assert torch.equal(data.y_train, x) and x.min() >= 0 and x.max() <= 1
    assert abs((x == 0).float().mean().item() - 0.8) < 0.02
    assert torch.allclose(data.loss_weights, 0.5 ** torch.arange(10.0))


def test_in_context_scored_positions_are_predictable_by_induction():
    span = 5
    data = make("in_context", 200, vocab=50, seq_len=24, span=span, n_test=10)
    assert data.shape.per_token and data.x_train.shape == data.y_train.shape == (200, 24)
    for x, y in zip(data.x_train, data.y_train, strict=True):
        scored = (y != IGNORE).nonzero().flatten()
        assert len(scored) == span - 1 and torch.equal(scored, torch.arange(scored[0], scored[0] + span - 1))
        assert torch.equal(y[scored], x[scored + 1]), "labels are the next tokens"
        start = int(scored[0])
        copy = x[start : start + span]
        earlier = [d for d in range(span, start + 1) if torch.equal(x[start - d : start - d + span], copy)]
        assert earlier, "the scored span repeats an earlier span"


def test_in_context_refuses_a_span_that_cannot_repeat():
    with pytest.raises(UserError, match="span"):
        make("in_context", 10, seq_len=8, span=5)
