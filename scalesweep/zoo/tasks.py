"""Tasks: deterministic data generators, each known for a phenomenon.

Every task draws its data from its own `torch.Generator` seeded by the run's
seed (never the global RNG), so the same seed gives the same data in any
process, alone or in a seed ensemble. `data_size` is the number of training
examples; the test set never shares an example with the training set.

Each task's parameters, data shape and size limit are declared in `task_params.py`
(without torch, so that a spec is checked without importing this module).
"""

from __future__ import annotations

import torch

from scalesweep.errors import UserError
from scalesweep.zoo.base import IGNORE
from scalesweep.zoo.data import Dataset
from scalesweep.zoo.task_params import (
    InContextParams,
    ModularArithmeticParams,
    SparseParityParams,
    SuperpositionParams,
    TeacherStudentParams,
    in_context_shape,
    modular_arithmetic_shape,
    sparse_parity_shape,
    superposition_shape,
    teacher_student_shape,
)


def _modular_table(p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (a, b) and its label (a op b) mod p; for ÷ only b != 0."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if op == "/":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
        labels = (a * inverse[b]) % p
    else:
        labels = {"+": a + b, "-": a - b, "*": a * b}[op] % p
    return torch.stack([a, b], dim=1), labels


def modular_arithmetic(params: ModularArithmeticParams, data_size: int, seed: int) -> Dataset:
    """(a op b) mod p (Power et al. 2022). Knobs: `p`, `op` in + - * /.

    Inputs are the two tokens (a, b) over a vocabulary of p; the label is one of
    p classes. `data_size` pairs are trained on; the test set is every other pair.
    """
    x, y = _modular_table(params.p, params.op)
    if not 1 <= data_size < len(x):
        raise UserError(
            f"modular_arithmetic with p={params.p} has {len(x)} pairs; data_size must be "
            f"between 1 and {len(x) - 1} (so that some pairs are left to test on), got {data_size}."
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:data_size], order[data_size:]
    return Dataset(x[train], y[train], x[test], y[test], modular_arithmetic_shape(params), "classification")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sparse parity


def _distinct_codes(n_bits: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct integers in [0, 2^n_bits), uniformly at random, in random order.

    Draws with replacement and keeps the distinct values (a uniform random subset
    by symmetry); small spaces are permuted outright.
    """
    space = 2**n_bits
    if space <= 4 * count:
        return torch.randperm(space, generator=generator)[:count]
    codes = torch.empty(0, dtype=torch.long)
    while len(codes) < count:
        draw = torch.randint(space, (2 * count + 16,), generator=generator, dtype=torch.long)
        codes = torch.unique(torch.cat([codes, draw]))
    return codes[torch.randperm(len(codes), generator=generator)[:count]]


def sparse_parity(params: SparseParityParams, data_size: int, seed: int) -> Dataset:
    """(n, k)-sparse parity (Barak et al. 2022, "Hidden Progress in Deep Learning").

    Knobs: `n_bits` (n), `k`, `n_test`. Inputs are n random bits as +-1 floats; the
    label is the parity of k hidden bits, chosen from the seed. Train and test
    examples are distinct bit strings, so the test set measures generalisation.
    """
    if params.k > params.n_bits:
        raise UserError(f"sparse_parity needs k <= n_bits, got k={params.k}, n_bits={params.n_bits}.")
    space = 2**params.n_bits
    if data_size + params.n_test > space:
        raise UserError(
            f"sparse_parity with n_bits={params.n_bits} has {space} distinct inputs; data_size + n_test "
            f"must be at most that, got {data_size} + {params.n_test}."
        )
    g = _generator(seed)
    hidden = torch.randperm(params.n_bits, generator=g)[: params.k]
    codes = _distinct_codes(params.n_bits, data_size + params.n_test, g)
    bits = (codes[:, None] >> torch.arange(params.n_bits)) & 1
    labels = bits[:, hidden].sum(1) % 2
    x = 1.0 - 2.0 * bits.float()  # bit 0 -> +1, bit 1 -> -1
    shape = sparse_parity_shape(params)
    return Dataset(x[:data_size], labels[:data_size], x[data_size:], labels[data_size:], shape, "classification")


# ---------------------------------------------------------------- teacher-student


def teacher(params: TeacherStudentParams) -> torch.nn.Module:
    """The fixed random teacher: a ReLU MLP with 1/fan_in weight variance, so
    its outputs have unit-order scale whatever its width."""
    g = _generator(params.teacher_seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init must not move the global RNG
        return _teacher_layers(params, g)


def _teacher_layers(params: TeacherStudentParams, g: torch.Generator) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    fan_in = params.input_dim
    for _ in range(params.teacher_depth):
        linear = torch.nn.Linear(fan_in, params.teacher_width)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            linear.bias.zero_()
        layers += [linear, torch.nn.ReLU()]
        fan_in = params.teacher_width
    readout = torch.nn.Linear(fan_in, params.output_dim)
    with torch.no_grad():
        readout.weight.copy_(torch.randn(readout.weight.shape, generator=g) / fan_in**0.5)
        readout.bias.zero_()
    return torch.nn.Sequential(*layers, readout)


def teacher_student(params: TeacherStudentParams, data_size: int, seed: int) -> Dataset:
    """Regression on a fixed random teacher MLP (the teacher depends on `teacher_seed` only).

    Knobs: `input_dim`, `teacher_width`, `teacher_depth`, `output_dim`, `label_noise`
    (Gaussian, std, added to training labels only: the test set scores the clean
    function, as in Nakkiran et al. 2019), `n_test`. Inputs are standard normal.
    """
    g = _generator(seed)
    x = torch.randn(data_size + params.n_test, params.input_dim, generator=g)
    with torch.no_grad():
        y = teacher(params)(x)
    noise = params.label_noise * torch.randn(data_size, params.output_dim, generator=g)
    shape = teacher_student_shape(params)
    return Dataset(x[:data_size], y[:data_size] + noise, x[data_size:], y[data_size:], shape, "regression")


# ---------------------------------------------------------------- superposition


def importances(params: SuperpositionParams) -> torch.Tensor:
    return params.importance_decay ** torch.arange(params.n_features, dtype=torch.float32)


def sparse_features(params: SuperpositionParams, count: int, generator: torch.Generator) -> torch.Tensor:
    """Each feature is 0 with probability `sparsity`, else uniform on [0, 1] (Elhage et al. 2022)."""
    values = torch.rand(count, params.n_features, generator=generator)
    present = torch.rand(count, params.n_features, generator=generator) >= params.sparsity
    return values * present


def superposition(params: SuperpositionParams, data_size: int, seed: int) -> Dataset:
    """Reconstruct sparse features through a bottleneck (Elhage et al. 2022).

    Knobs: `n_features` (n), `sparsity` S, `importance_decay` (feature i has
    importance decay^i, weighting its squared error), `n_test`. The target is the
    input; pair it with the `tms` family, whose width knob is the hidden size m.
    """
    g = _generator(seed)
    x = sparse_features(params, data_size + params.n_test, g)
    shape = superposition_shape(params)
    train, test = x[:data_size], x[data_size:]
    return Dataset(train, train, test, test, shape, "regression", loss_weights=importances(params))


# ---------------------------------------------------------------- in-context copying


def repeated_spans(
    params: InContextParams, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences in which one random span appears twice, at random places.

    Labels are next tokens (y[t] = x[t+1]) at the positions where induction can
    predict them, inside the second copy; every other position is IGNORE. Random
    places keep a fixed positional offset from solving the task.
    """
    n, length = params.seq_len, params.span
    x = torch.randint(params.vocab, (count, n), generator=generator)
    first = (torch.rand(count, generator=generator) * (n - 2 * length + 1)).long()
    gap = (torch.rand(count, generator=generator) * (n - 2 * length - first + 1)).long()
    second = first + length + gap
    offsets = torch.arange(length)
    rows = torch.arange(count)[:, None]
    x[rows, second[:, None] + offsets] = x[rows, first[:, None] + offsets]
    y = torch.full((count, n), IGNORE)
    scored = second[:, None] + offsets[:-1]
    y[rows, scored] = x[rows, scored + 1]
    return x, y


def in_context(params: InContextParams, data_size: int, seed: int) -> Dataset:
    """Copy a repeated random span in context (Olsson et al. 2022, induction heads).

    Knobs: `vocab`, `seq_len`, `span` (the repeated span's length), `n_test`.
    Per-token next-token prediction, scored only inside the second copy of the
    span, where an induction head (attend to the token after the previous
    occurrence of the current token, copy it) predicts perfectly.
    """
    if 2 * params.span > params.seq_len:
        raise UserError(f"in_context needs 2 * span <= seq_len, got span={params.span}, seq_len={params.seq_len}.")
    x, y = repeated_spans(params, data_size + params.n_test, _generator(seed))
    shape = in_context_shape(params)
    return Dataset(x[:data_size], y[:data_size], x[data_size:], y[data_size:], shape, "classification")
