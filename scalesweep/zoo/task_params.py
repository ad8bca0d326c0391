"""The built-in tasks as a spec sees them: parameters, data shape, size limit (no torch).

Each task's generator is in `tasks.py` (torch), named here by import path and
imported only where data is made (see `base.py` for why).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from scalesweep.zoo.base import DataShape, Params, TaskInfo, add

GENERATORS = "scalesweep.zoo.tasks"  # the module that makes each task's tensors


class ModularArithmeticParams(Params):
    p: int = Field(default=97, ge=2, le=2000, description="the modulus (a prime for ÷)")
    op: Literal["+", "-", "*", "/"] = "+"


def modular_pairs(params: ModularArithmeticParams) -> int:
    """Every pair (a, b) in [0, p)^2; for ÷ only b != 0."""
    return params.p * (params.p - 1 if params.op == "/" else params.p)


def modular_arithmetic_shape(params: ModularArithmeticParams) -> DataShape:
    """The two tokens (a, b) over a vocabulary of p; one of p classes."""
    return DataShape("tokens", output_dim=params.p, vocab=params.p, seq_len=2)


class SparseParityParams(Params):
    n_bits: int = Field(default=40, ge=2, le=62, description="input bits n")
    k: int = Field(default=3, ge=1, le=62, description="hidden bits whose parity is the label")
    n_test: int = Field(default=1000, ge=1, le=1_000_000, description="test examples")


def sparse_parity_shape(params: SparseParityParams) -> DataShape:
    """n bits as +-1 floats; two classes."""
    return DataShape("vectors", output_dim=2, input_dim=params.n_bits)


class TeacherStudentParams(Params):
    input_dim: int = Field(default=16, ge=1, le=4096)
    teacher_width: int = Field(default=64, ge=1, le=4096, description="hidden units of the teacher")
    teacher_depth: int = Field(default=1, ge=1, le=8, description="hidden layers of the teacher")
    output_dim: int = Field(default=1, ge=1, le=1024)
    label_noise: float = Field(default=0.0, ge=0, le=100, description="std of Gaussian noise on training labels")
    teacher_seed: int = Field(default=0, description="the teacher is fixed by this, not by the run seed")
    n_test: int = Field(default=2000, ge=1, le=1_000_000)


def teacher_student_shape(params: TeacherStudentParams) -> DataShape:
    return DataShape("vectors", output_dim=params.output_dim, input_dim=params.input_dim)


class SuperpositionParams(Params):
    n_features: int = Field(default=20, ge=1, le=100_000, description="sparse input features n")
    sparsity: float = Field(default=0.9, ge=0, lt=1, description="probability that a feature is zero")
    importance_decay: float = Field(default=0.9, gt=0, le=1, description="importance of feature i is decay^i")
    n_test: int = Field(default=2000, ge=1, le=1_000_000)


def superposition_shape(params: SuperpositionParams) -> DataShape:
    """The target is the input: n features in, n out."""
    return DataShape("vectors", output_dim=params.n_features, input_dim=params.n_features)


class InContextParams(Params):
    vocab: int = Field(default=64, ge=4, le=100_000)
    seq_len: int = Field(default=64, ge=4, le=4096)
    span: int = Field(default=10, ge=2, le=2048, description="length of the repeated span")
    n_test: int = Field(default=512, ge=1, le=1_000_000)


def in_context_shape(params: InContextParams) -> DataShape:
    """Token sequences with a next-token target at every position (IGNORE where not scored)."""
    return DataShape("tokens", output_dim=params.vocab, vocab=params.vocab, seq_len=params.seq_len, per_token=True)


for info in (
    TaskInfo(
        "modular_arithmetic",
        ModularArithmeticParams,
        f"{GENERATORS}:modular_arithmetic",
        known_for="grokking (Power et al. 2022); phases comprehension / grokking / "
        "memorization / confusion (Liu et al. 2022)",
        shape_of=modular_arithmetic_shape,
        max_data_size=lambda params: modular_pairs(params) - 1,  # leave pairs to test on
    ),
    TaskInfo(
        "sparse_parity",
        SparseParityParams,
        f"{GENERATORS}:sparse_parity",
        known_for="sudden learning after a long loss plateau, with hidden progress (Barak et al. 2022)",
        shape_of=sparse_parity_shape,
        max_data_size=lambda params: 2**params.n_bits - params.n_test,
    ),
    TaskInfo(
        "teacher_student",
        TeacherStudentParams,
        f"{GENERATORS}:teacher_student",
        known_for="power-law loss in model and data size; double descent in width near the "
        "interpolation threshold with label noise (Nakkiran et al. 2019)",
        shape_of=teacher_student_shape,
    ),
    TaskInfo(
        "superposition",
        SuperpositionParams,
        f"{GENERATORS}:superposition",
        known_for="superposition: features represented per hidden dimension rise with feature "
        "sparsity (Elhage et al. 2022, Toy Models of Superposition)",
        shape_of=superposition_shape,
    ),
    TaskInfo(
        "in_context",
        InContextParams,
        f"{GENERATORS}:in_context",
        known_for="induction heads forming abruptly, with a bump in in-context loss "
        "(Olsson et al. 2022); needs a transformer with >= 2 layers",
        shape_of=in_context_shape,
    ),
):
    add(info)
