"""Train one RunConfig, or a seed ensemble of them, with torch, yielding what it measures as it goes.

Training is a generator of *events* so that the same code serves a plain
loop, a test and a Ray streaming task: the caller decides where rows go.
Events are dicts with a `run_key` and a `kind`:

- `metrics`: `rows`, a list of `{"step": s, column: value, ...}` (buffered,
  flushed about every `FLUSH_SECONDS` so that tracking stays cheap);
- `summary`: `summary`, the run's scalars; the run finished;
- `failed`: `error` and `traceback`; the run raised;
- `checkpoint`: `run_keys`, `step`, `data` (the bytes of `torch.save`) and `seconds` (the time it
  took): all a run (or a whole seed ensemble) needs to go on from `step`, sent right after the rows
  up to `step` were flushed, so the rows not yet sent are none (see `CheckpointSpec`);
- `resumed`: `step`; the run goes on from a checkpoint taken there, and its next `metrics` event
  holds the rows up to that step again (from the checkpoint), so that the new attempt's record has
  the whole history once.

A NaN or infinite loss is not a failure: the run stops, and its summary says
`diverged = 1`, because instability is a phenomenon too.

Seed ensembles, and groups: runs that differ only in seed (or also in data size, lr or weight
decay: `plan.group_by_stack`) train together as one vectorised model (`torch.func`: stacked
parameters, `vmap` over `functional_call`), as in the torch.func model-ensembling tutorial. Each
member keeps its own data, minibatch stream, optimiser groups and events, and matches the same run
trained alone to float tolerance: the optimisers used (SGD, Adam, AdamW) act elementwise, so one
optimiser over stacked parameters is one per member (members of other lr or weight decay get
stacked tensors and groups of their own, `Ensemble`), and the gradient of the summed per-member
losses is each member's own gradient. Batches of different lengths (full batches of different data
sizes) are padded to the longest and each member's loss is taken over its own rows only
(`GroupData`, `zoo.data.masked_loss_fn_for`).
"""

from __future__ import annotations

import copy
import io
import math
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from scalesweep import observables as obs
from scalesweep.optim import Optimizer
from scalesweep.plan import RunConfig, group_by_stack
from scalesweep.spec import CheckpointSpec, TrainingSpec
from scalesweep.zoo import FAMILIES, TASKS
from scalesweep.zoo.data import Dataset, cross_entropy, loss_fn_for, masked_cross_entropy, masked_loss_fn_for

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["build", "loss_fn_for", "n_params", "pick_device", "train_one", "train_runs", "train_to_result"]

Event = dict[str, Any]
FLUSH_SECONDS = 2.0  # live curves every ~2 s; each flush is one MLflow write on the driver
CHECKPOINT_FORMAT = 2  # a checkpoint of another format (or kind, or runs) is ignored: the run starts over


class InjectedFailure(RuntimeError):
    """Raised at `training.fail_at_step`, to exercise failure handling end to end."""


def pick_device(gpus_per_run: float = 0.0) -> torch.device:
    """CUDA when the run was given a GPU share and one is visible, else CPU."""
    return torch.device("cuda" if gpus_per_run > 0 and torch.cuda.is_available() else "cpu")


def build(config: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Dataset]:
    """Make the run's data and its freshly initialised model, both from the run's seed."""
    task = TASKS[config.task]
    family = FAMILIES[config.family]
    data = task.make(task.params_model.model_validate(config.task_params), config.data_size, config.seed)
    torch.manual_seed(config.seed)
    params = family.params_model.model_validate(config.model_params)
    model = family.build(params, config.model_size, data.shape, config.parametrization)
    return model.to(device), data.to(device)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_multipliers(model: torch.nn.Module, optimizer: str) -> dict[str, float]:
    """The model's per-parameter learning-rate factors (muP), {} when it has none."""
    method = getattr(model, "lr_multipliers", None)
    return method(optimizer) if callable(method) else {}


def param_groups(
    named_params: Iterable[tuple[str, torch.Tensor]], multipliers: dict[str, float], t: TrainingSpec
) -> list[dict[str, Any]]:
    """One parameter group per (learning rate, weight decay): muP's factors give hidden matrices
    their own rate."""
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for name, param in named_params:
        groups.setdefault((t.lr * multipliers.get(name, 1.0), t.weight_decay), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def make_optimizer(groups: list[dict[str, Any]], t: TrainingSpec) -> Optimizer:
    """`t.optimizer` over `groups` (see `param_groups`): torch's kernels, fused where the device
    has one, without torch.optim's classes (`scalesweep.optim` says why)."""
    return Optimizer(groups, t.optimizer)


def train_runs(
    configs: list[RunConfig],
    gpus_per_run: float = 0.0,
    checkpoint: CheckpointSpec | None = None,
    resume: dict[str, bytes] | None = None,
) -> Iterator[Event]:
    """Train runs; those that differ only in seed, data size, lr or weight decay train together as
    one vectorised model (`plan.group_by_stack`).
    `checkpoint` says when to yield checkpoints (None: never); `resume` maps a run key to the
    checkpoint it goes on from (one that does not fit its run is ignored: it starts over)."""
    device = pick_device(gpus_per_run)
    resume = resume or {}
    for group in group_by_stack(configs):
        if len(group) >= 2:
            yield from train_ensemble(group, device, checkpoint, resume)
        else:
            yield from train_one(group[0], device, checkpoint, resume.get(group[0].run_key))


def train_one(
    config: RunConfig,
    device: torch.device | None = None,
    checkpoint: CheckpointSpec | None = None,
    resume: bytes | None = None,
) -> Iterator[Event]:
    """Train one run, yielding metrics events, then a summary or a failure."""
    key = config.run_key
    try:
        yield from _train(config, device or torch.device("cpu"), checkpoint, resume)
    except Exception as err:  # a crashing run is recorded, and the sweep goes on
        yield _failed(key, err)


def _failed(key: str, err: Exception) -> Event:
    return {
        "run_key": key,
        "kind": "failed",
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(),
    }


class Recorder:
    """One run's measurements: init stats, evaluation rows (flushed as events), summary."""

    def __init__(
        self, config: RunConfig, model: torch.nn.Module, data: Dataset, started: float, saved: dict | None = None
    ):
        """`saved`: the recorder's `state()` from a checkpoint; else the at-init parts measure `model`."""
        self.config, self.model, self.data, self.started = config, model, data, started
        self.key = config.run_key
        self.loss_fn = loss_fn_for(data)
        self.observables = obs.resolve(config.observables)
        self.history: list[dict[str, float]] = list(saved["history"]) if saved else []
        self.buffer: list[dict[str, float]] = []
        self.last_flush = time.perf_counter()
        self.diverged = False
        self.init_stats: dict[str, Any] = dict(saved["init_stats"]) if saved else {}
        for observable in self.observables if saved is None else ():
            if observable.at_init is not None:
                with torch.no_grad():
                    self.init_stats.update(observable.at_init(model, data))

    def state(self) -> dict[str, Any]:
        """What the summaries depend on besides the model: every row so far (fit_steps' first
        steps, loss spikes, ...) and what the at-init parts measured (initial weights, RMS)."""
        return {"history": list(self.history), "init_stats": dict(self.init_stats)}

    def resumed(self, step: int) -> list[Event]:
        """Going on from a checkpoint at `step`: say so, and send the rows up to it again, for
        the new attempt's record (the killed attempt's rows stay on its own record)."""
        rows = {"run_key": self.key, "kind": "metrics", "rows": list(self.history)}
        return [{"run_key": self.key, "kind": "resumed", "step": step}, rows]

    def evaluate(
        self, step: int, grad_norm: float, outputs: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> list[Event]:
        """Measure the step observables; returns the metrics event due now, if any."""
        row = _evaluate(
            self.model, self.data, self.loss_fn, self.observables, step, grad_norm, outputs, self.init_stats
        )
        self.history.append(row)
        self.buffer.append(row)
        self.diverged = not all(math.isfinite(row.get(c, 0.0)) for c in ("train_loss", "test_loss"))
        if self.diverged or time.perf_counter() - self.last_flush > FLUSH_SECONDS:
            return self.flush()
        return []

    def flush(self) -> list[Event]:
        events = [{"run_key": self.key, "kind": "metrics", "rows": self.buffer}] if self.buffer else []
        self.buffer, self.last_flush = [], time.perf_counter()
        return events

    def finish(self, **extra: float) -> list[Event]:
        """The last metrics and the summary event, measured in eval mode (as a vectorised group's
        members always are): training is over."""
        self.model.eval()
        ctx = obs.RunContext(
            self.model, self.data, self.config.training.steps, self.config.training.fit_threshold, self.init_stats
        )
        import pandas as pd  # here, not at the top: a worker's first step need not wait for it (~0.25 s)

        history = pd.DataFrame(self.history)
        summary: dict[str, float] = {}
        for observable in self.observables:
            if observable.summary is not None:
                summary.update({k: float(v) for k, v in observable.summary(history, ctx).items()})
        summary.update(
            n_params=float(n_params(self.model)),
            diverged=float(self.diverged),
            train_seconds=time.perf_counter() - self.started,
            **extra,
        )
        return [*self.flush(), {"run_key": self.key, "kind": "summary", "summary": summary}]


def _is_eval_step(step: int, t: TrainingSpec) -> bool:
    return step % t.eval_every == 0 or step == t.steps


def _train(
    config: RunConfig, device: torch.device, checkpoint: CheckpointSpec | None = None, resume: bytes | None = None
) -> Iterator[Event]:
    started = time.perf_counter()
    t = config.training
    model, data = build(config, device)
    saved = load_checkpoint(resume, "run", [config.run_key], device)
    recorder = Recorder(config, model, data, started, saved["recorders"][0] if saved else None)
    optimizer = make_optimizer(param_groups(model.named_parameters(), lr_multipliers(model, t.optimizer), t), t)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start = 0
    if saved:
        model.load_state_dict(saved["model"])
        start = _restore(saved, optimizer, [generator], [recorder])
        yield from recorder.resumed(start)
    saver = Checkpointer(checkpoint, resumed=saved is not None)
    minibatches = Minibatches(len(data.x_train), generator, t)
    grad_norm = math.nan
    for step in range(start, t.steps + 1):
        if _is_eval_step(step, t) and not (saved and step == start):  # a resumed run has that row
            yield from recorder.evaluate(step, grad_norm)
            if step < t.steps and not recorder.diverged and saver.due():
                yield from recorder.flush()
                parts = {"model": model.state_dict()}
                states = minibatches.checkpoint_states(step)
                yield saver.event([config.run_key], step, parts, optimizer, states, [recorder])
        if step == t.steps or recorder.diverged:
            break
        if t.fail_at_step is not None and step == t.fail_at_step:
            raise InjectedFailure(f"injected failure at step {step} (training.fail_at_step)")
        want_norm = _is_eval_step(step + 1, t)
        grad_norm = _train_step(model, data, recorder.loss_fn, optimizer, minibatches.at(step), want_norm)
    yield from recorder.finish()


class Checkpointer:
    """When a run yields a checkpoint: once it has trained `after_seconds` (so short runs never
    pay for one), then at most every `every_seconds`; always at an evaluation step, never the
    last. A resumed run waits `every_seconds` before its next one."""

    def __init__(self, spec: CheckpointSpec | None, resumed: bool = False):
        self.every = spec.every_seconds if spec is not None else math.inf
        wait = math.inf if spec is None or not spec.enabled else spec.every_seconds if resumed else spec.after_seconds
        self.next_at = time.perf_counter() + wait

    def due(self) -> bool:
        now = time.perf_counter()
        if now < self.next_at:
            return False
        self.next_at = now + self.every
        return True

    def event(
        self,
        keys: list[str],
        step: int,
        parts: dict[str, Any],
        optimizer: Optimizer,
        generator_states: list[torch.Tensor],
        recorders: list[Recorder],
    ) -> Event:
        """The `checkpoint` event: `parts` (the model's tensors) with the optimiser, the minibatch
        streams, the global RNG, the step, the time trained so far and each recorder's state."""
        began = time.perf_counter()
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": "ensemble" if len(recorders) > 1 else "run",
            "run_keys": keys,
            "step": step,
            "elapsed": began - recorders[0].started,
            "optimizer": optimizer.state_dict(),
            "generators": generator_states,
            "rng": torch.get_rng_state(),
            "recorders": [r.state() for r in recorders],
            **parts,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        seconds = time.perf_counter() - began
        return {
            "run_key": keys[0],
            "kind": "checkpoint",
            "run_keys": keys,
            "step": step,
            "data": buffer.getvalue(),
            "seconds": seconds,
        }


def load_checkpoint(data: bytes | None, kind: str, keys: list[str], device: torch.device) -> dict[str, Any] | None:
    """A checkpoint's contents, or None when there is none or it is not one of these runs (another
    format, kind or set of runs; unreadable bytes): then the runs start over, which is always right.
    Read with `weights_only` (tensors and plain values only): the bytes come from the store."""
    if not data:
        return None
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception:
        return None
    fits = isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and state.get("kind") == kind
    return state if fits and state.get("run_keys") == keys else None


def _restore(saved: dict[str, Any], optimizer, generators: list[torch.Generator], recorders: list[Recorder]) -> int:
    """Put back what the model's tensors do not hold; returns the step to go on from."""
    optimizer.load_state_dict(saved["optimizer"])
    for generator, state in zip(generators, saved["generators"], strict=True):
        generator.set_state(state.cpu())
    torch.set_rng_state(saved["rng"].cpu())
    for recorder in recorders:
        recorder.started -= saved["elapsed"]  # train_seconds counts the killed attempt's training too
    return int(saved["step"])


BLOCK_ROWS = 1 << 16  # a run's block of minibatch draws holds at most this many rows (512 KiB)


class BlockDraws:
    """Random draws a training loop needs at every step, made a block of steps at a time: steps
    [kK, (k+1)K) in one call per generator, K = BLOCK_ROWS // batch_size (one `torch.randint` for a
    block instead of one a step: a step of a small model is mostly such per-call costs; K bounds
    the memory). The blocks sit at fixed steps, the same for a run alone and in a group, so a run's
    draws do not depend on when it evaluates or checkpoints. A checkpoint keeps each generator's
    state from before the block that holds its step (`checkpoint_states`); a resumed run draws
    that block again and goes on at its step, as if never stopped."""

    def __init__(self, generators: list[torch.Generator], t: TrainingSpec):
        self.generators, self.t = generators, t
        self.steps_per_block = max(1, BLOCK_ROWS // t.batch_size)
        self.first, self.end = 0, 0
        self.before: list[torch.Tensor] = []  # the generators' states before the current block

    def offset(self, step: int) -> int:
        """`step`'s row in its block, drawing that block when it is not the current one."""
        if not self.first <= step < self.end:
            self.first = step // self.steps_per_block * self.steps_per_block
            self.end = min(self.first + self.steps_per_block, self.t.steps)
            self.before = [g.get_state() for g in self.generators]
            self.draw(self.end - self.first)
        return step - self.first

    def checkpoint_states(self, step: int) -> list[torch.Tensor]:
        """The generators' states for a checkpoint taken before `step` trains: from before the
        block that holds `step` when it is drawn already, else as they are."""
        if self.first <= step < self.end:
            return list(self.before)
        return [g.get_state() for g in self.generators]

    def draw(self, steps: int) -> None:
        raise NotImplementedError


def draw_minibatches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor | None:
    """The rows of `steps` consecutive minibatches, (steps, batch_size), drawn with replacement
    from n in one call; None when the whole set fits in one batch. On the CPU one call gives the
    same numbers as one call per minibatch and leaves the generator where those would
    (tests/test_ensemble.py), so blocks changed no CPU run; on a GPU they differ, but a run's
    blocks are the same alone, in a group and resumed."""
    if batch_size >= n:
        return None
    return torch.randint(n, (steps, batch_size), generator=generator, device=generator.device)


class Minibatches(BlockDraws):
    """One run's minibatch rows, step by step (None: its whole training set)."""

    def __init__(self, n: int, generator: torch.Generator, t: TrainingSpec):
        super().__init__([generator], t)
        self.n, self.block = n, None

    def draw(self, steps: int) -> None:
        self.block = draw_minibatches(self.n, self.t.batch_size, steps, self.generators[0])

    def at(self, step: int) -> torch.Tensor | None:
        row = self.offset(step)
        return None if self.block is None else self.block[row]


def _train_step(model, data: Dataset, loss_fn, optimizer, idx: torch.Tensor | None, want_grad_norm: bool) -> float:
    """One optimiser step on the minibatch `idx` (None: the whole training set).

    The gradient norm is only read (a host sync) just before an evaluation.
    """
    x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    grad_norm = math.nan
    if want_grad_norm:
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    optimizer.step()
    return grad_norm


@torch.no_grad()
def _evaluate(
    model,
    data: Dataset,
    loss_fn,
    observables: list[obs.Observable],
    step: int,
    grad_norm: float,
    outputs=None,
    init_stats: dict | None = None,
) -> dict[str, float]:
    """One evaluation row; `outputs` (train, test) when the caller already computed them;
    `init_stats` what the at-init parts measured (e.g. the initial weights)."""
    training = model.training  # a vectorised group's members stay in eval mode (`Ensemble`)
    if training:
        model.eval()
    train_out, test_out = outputs if outputs is not None else (model(data.x_train), model(data.x_test))
    ctx = obs.EvalContext(step, model, data, train_out, test_out, loss_fn, grad_norm, init_stats or {})
    row: dict[str, float] = {"step": float(step)}
    for observable in observables:
        if observable.step is not None:
            row.update(observable.step(ctx))
    if training:
        model.train()
    return row


# ---------------------------------------------------------------- vectorised groups (seed ensembles and more)


class Ensemble:
    """S models of one architecture run as one vectorised model: vmap over functional_call (the
    torch.func model-ensembling tutorial).

    Consecutive members with the same `keys` (their optimiser hyperparameters) form a block whose
    parameters are stacked into leaf tensors of its own, so that each block has its own optimiser
    groups (its lr and weight decay) while a seed ensemble is one block, one tensor per parameter,
    as cheap for the optimiser as one model. Each member's own module stays usable (observables
    read it): its parameters and buffers are rebound to views of the stacked tensors, which the
    optimiser updates in place. The forward concatenates the blocks (autograd's gradients flow back
    to each; a family's written-out gradients, `backward`, are sliced to each).
    """

    def __init__(self, models: list[nn.Module], keys: list[Any] | None = None):
        self.models = models
        keys = keys if keys is not None else [None] * len(models)
        starts = [i for i in range(len(models)) if i == 0 or keys[i] != keys[i - 1]]
        self.spans = list(zip(starts, [*starts[1:], len(models)], strict=True))
        self.blocks = [stack_module_state(models[i:j])[0] for i, j in self.spans]
        self.buffers = stack_module_state(models)[1]
        for (i, j), block in zip(self.spans, self.blocks, strict=True):
            for k, model in enumerate(models[i:j]):
                for name, tensor in model.named_parameters():
                    tensor.data = block[name].data[k]
        for k, model in enumerate(models):
            for name, tensor in model.named_buffers():
                tensor.data = self.buffers[name].data[k]
        self.base = copy.deepcopy(models[0]).to("meta")  # in training mode, as the models came
        for model in models:  # trained through the stacked tensors, read only by observables
            model.eval()
        self.stacked_forward = getattr(models[0], "stacked_forward", None)  # a family's own, without vmap
        self.stacked_grads = getattr(models[0], "stacked_grads", None)  # a family's cross-entropy gradients

    def params(self) -> dict[str, torch.Tensor]:
        """Every member's parameters, stacked (member order)."""
        if len(self.blocks) == 1:
            return self.blocks[0]
        return {name: torch.cat([block[name] for block in self.blocks]) for name in self.blocks[0]}

    def _call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of every member on its own inputs: x is (S, batch, ...)."""
        if self.stacked_forward is not None:
            return self.stacked_forward(self.params(), x)
        return vmap(self._call)(self.params(), self.buffers, x)

    def losses(self, loss_fn, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(S,) losses, member s on its inputs x[s] and labels y[s]; `rows` (S, batch): which rows
        are its own (a masked loss, see `masked_loss_fn_for`), None when all are. A family's
        `stacked_forward` (parameters only, no buffers) runs without vmap; the loss is vmapped."""
        extra = () if rows is None else (rows,)
        if self.stacked_forward is not None:
            return vmap(loss_fn)(self.stacked_forward(self.params(), x), y, *extra)
        loss = vmap(lambda p, b, xs, ys, *rs: loss_fn(self._call(p, b, xs), ys, *rs))
        return loss(self.params(), self.buffers, x, y, *extra)

    def backward(self, loss_fn, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Every member's gradient of its own loss (`losses`' arguments), added into the stacked
        parameters' `.grad` as autograd would. The family's own gradients (`stacked_grads`, written
        out) where it has them for this loss, a cross-entropy over (S, batch) labels; else
        autograd's."""
        cross_entropy_of_labels = y.dim() == 2 and (
            (loss_fn is cross_entropy and rows is None) or loss_fn is masked_cross_entropy
        )
        if self.stacked_grads is None or not cross_entropy_of_labels:
            self.losses(loss_fn, x, y, rows).sum().backward()
            return
        with torch.no_grad():  # the blocks' concatenation, not recorded
            grads = self.stacked_grads(self.params(), x, y, rows)
        for (i, j), block in zip(self.spans, self.blocks, strict=True):
            for name, param in block.items():  # with several blocks: views of one tensor
                grad = grads[name] if len(self.blocks) == 1 else grads[name][i:j]
                param.grad = grad if param.grad is None else param.grad + grad

    def grad_norms(self) -> list[float]:
        """Each member's gradient L2 norm (over all its parameters)."""
        squares = [
            sum(p.grad.pow(2).flatten(1).sum(1) for p in block.values() if p.grad is not None) for block in self.blocks
        ]
        sizes = [j - i for i, j in self.spans]
        return torch.cat([torch.as_tensor(s).expand(n) for s, n in zip(squares, sizes, strict=True)]).sqrt().tolist()


def hyperparameters(config: RunConfig) -> tuple[float, float]:
    """What a member's optimiser groups depend on besides the architecture (see `Ensemble`)."""
    return config.training.lr, config.training.weight_decay


def member_groups(ensemble: Ensemble, configs: list[RunConfig]) -> list[dict[str, Any]]:
    """Each block's parameter groups (its members' lr and weight decay, times muP's factors),
    those of equal (lr, weight decay) merged: SGD, Adam and AdamW act elementwise, so one group
    over several members' tensors is each member's own optimiser, and a fused optimiser updates
    each group in one call."""
    multipliers = lr_multipliers(ensemble.models[0], configs[0].training.optimizer)
    merged: dict[tuple[float, float], list[torch.Tensor]] = {}
    for (i, _), block in zip(ensemble.spans, ensemble.blocks, strict=True):
        for group in param_groups(block.items(), multipliers, configs[i].training):
            merged.setdefault((group["lr"], group["weight_decay"]), []).extend(group["params"])
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in merged.items()]


def _padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked, each padded to the longest with copies of its first row (valid inputs,
    whose outputs are sliced off or masked out)."""
    n = max(len(t) for t in tensors)
    return torch.stack([torch.cat([t, t[:1].expand(n - len(t), *t.shape[1:])]) for t in tensors])


class GroupData(BlockDraws):
    """The members' data stacked, each split padded to the longest, and each step's batches:
    member s draws from its own set with its own generator, as it would alone (a block of steps at
    a time, as `Minibatches`, stacked and offset into the flattened sets once per block)."""

    def __init__(self, datas: list[Dataset], generators: list[torch.Generator], t: TrainingSpec):
        super().__init__(generators, t)
        device = datas[0].x_train.device
        self.x_train, self.y_train = _padded([d.x_train for d in datas]), _padded([d.y_train for d in datas])
        self.x_eval = _padded([torch.cat([d.x_train, d.x_test]) for d in datas])
        self.n_train, self.n_test = [len(d.x_train) for d in datas], [len(d.x_test) for d in datas]
        counts = [min(t.batch_size, n) for n in self.n_train]
        self.width = max(counts)
        rows = torch.arange(self.width, device=device)
        self.rows = None if len(set(counts)) == 1 else (rows < torch.tensor(counts, device=device)[:, None]).float()
        self.offsets = torch.arange(len(datas), device=device)[:, None] * self.x_train.shape[1]
        self.wholes = [self._pad(torch.arange(n, device=device)) for n in self.n_train]  # full-batch rows
        self.flat: torch.Tensor | None = None  # (steps, members x width): the block's rows into x_train

    def _pad(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows (..., k) padded with row 0 to the batch width (a set larger than a batch: as it is,
        never used whole)."""
        short = self.width - idx.shape[-1]
        return torch.cat([idx, idx.new_zeros(idx.shape[:-1] + (short,))], -1) if short > 0 else idx

    def draw(self, steps: int) -> None:
        pairs = zip(self.n_train, self.generators, strict=True)
        blocks = [draw_minibatches(n, self.t.batch_size, steps, g) for n, g in pairs]
        if len(set(self.n_train)) == 1 and blocks[0] is None:  # every member's whole set, unpadded
            self.flat = None
            return
        padded = [
            whole.expand(steps, -1) if block is None else self._pad(block)
            for block, whole in zip(blocks, self.wholes, strict=True)
        ]
        self.flat = (torch.stack(padded, 1) + self.offsets).flatten(1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x, y, rows) of `step`: each member's minibatch (its whole set when it fits in one
        batch), padded; `rows` marks each member's own rows (None: all are)."""
        row = self.offset(step)
        if self.flat is None:
            return self.x_train, self.y_train, None
        flat = self.flat[row]
        x = self.x_train.flatten(0, 1).index_select(0, flat).view(-1, self.width, *self.x_train.shape[2:])
        y = self.y_train.flatten(0, 1).index_select(0, flat).view(-1, self.width, *self.y_train.shape[2:])
        return x, y, self.rows

    def outputs(self, ensemble: Ensemble) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each member's (train, test) outputs on its own rows, from one forward over each member's
        train and test rows together: padded to the longest sum, which wastes nothing when the
        sizes trade off (modular arithmetic's test set is the pairs left out of training)."""
        with torch.no_grad():
            out = ensemble(self.x_eval)
        sizes = enumerate(zip(self.n_train, self.n_test, strict=True))
        return [(out[i, :n], out[i, n : n + m]) for i, (n, m) in sizes]


def train_ensemble(
    configs: list[RunConfig],
    device: torch.device,
    checkpoint: CheckpointSpec | None = None,
    resume: dict[str, bytes] | None = None,
) -> Iterator[Event]:
    """Train runs that differ only in seed, data size, lr or weight decay (`plan.group_by_stack`)
    as one vectorised model; fall back to one after the other when they cannot be stacked. An
    exception fails every run of the group that has not finished yet; a diverging member finishes
    alone. `resume`: run key -> checkpoint; the group goes on from one only when every member holds
    the same one."""
    resume = resume or {}
    started = time.perf_counter()
    try:
        built = [build(config, device) for config in configs]
    except Exception as err:
        for config in configs:
            yield _failed(config.run_key, err)
        return
    if not _can_stack(built):
        for config in configs:
            yield from train_one(config, device, checkpoint, resume.get(config.run_key))
        return
    blobs = {resume.get(c.run_key) for c in configs}
    blob = blobs.pop() if len(blobs) == 1 else None
    finished: set[str] = set()
    try:
        for event in _train_ensemble(configs, built, device, started, checkpoint, blob):
            if event["kind"] == "summary":
                finished.add(event["run_key"])
            yield event
    except Exception as err:
        for config in configs:
            if config.run_key not in finished:
                yield _failed(config.run_key, err)


def _data_signature(data: Dataset) -> tuple:
    """What members must share to stack: per-example shapes and dtypes, kind and loss."""
    splits = (data.x_train, data.y_train, data.x_test, data.y_test)
    weights = None if data.loss_weights is None else tuple(data.loss_weights.flatten().tolist())
    return (*((t.shape[1:], t.dtype) for t in splits), data.shape, data.kind, weights)


def _can_stack(built: list[tuple[nn.Module, Dataset]]) -> bool:
    """Same parameter shapes, same per-example data shapes and loss, and a vmapped
    forward/backward that works."""
    models, datas = [m for m, _ in built], [d for _, d in built]
    names = [[(n, p.shape, p.dtype) for n, p in m.named_parameters()] for m in models]
    signatures = [_data_signature(d) for d in datas]
    if any(n != names[0] for n in names) or any(s != signatures[0] for s in signatures):
        return False
    try:
        trial = Ensemble([copy.deepcopy(m) for m in models[:2]])
        x = torch.stack([d.x_train[:2] for d in datas[:2]])
        y = torch.stack([d.y_train[:2] for d in datas[:2]])
        trial.backward(loss_fn_for(datas[0]), x, y)
        trial.backward(masked_loss_fn_for(datas[0]), x, y, torch.ones(2, 2, device=x.device))
    except Exception:  # an architecture vmap cannot batch: train the members one by one
        return False
    return True


def _train_ensemble(
    configs: list[RunConfig],
    built,
    device: torch.device,
    started: float,
    checkpoint: CheckpointSpec | None = None,
    resume: bytes | None = None,
) -> Iterator[Event]:
    t = configs[0].training
    keys = [c.run_key for c in configs]
    models, datas = [m for m, _ in built], [d for _, d in built]
    saved = load_checkpoint(resume, "ensemble", keys, device)
    saved = saved if saved and "blocks" in saved else None  # an older layout ("stacked"): start over
    states = saved["recorders"] if saved else [None] * len(configs)
    recorders = [Recorder(c, m, d, started, s) for c, (m, d), s in zip(configs, built, states, strict=True)]
    ensemble = Ensemble(models, [hyperparameters(c) for c in configs])
    generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
    data = GroupData(datas, generators, t)
    loss_fn = recorders[0].loss_fn if data.rows is None else masked_loss_fn_for(datas[0])
    optimizer = make_optimizer(member_groups(ensemble, configs), t)
    start = 0
    if saved:
        with torch.no_grad():  # in place: each member's module holds views of these tensors
            for block, tensors in zip(ensemble.blocks, saved["blocks"], strict=True):
                for name, tensor in block.items():
                    tensor.copy_(tensors[name])
        start = _restore(saved, optimizer, generators, recorders)
        for recorder in recorders:
            yield from recorder.resumed(start)
    saver = Checkpointer(checkpoint, resumed=saved is not None)
    active = list(range(len(configs)))
    grad_norms = [math.nan] * len(configs)
    for step in range(start, t.steps + 1):
        if _is_eval_step(step, t) and not (saved and step == start):  # a resumed group has that row
            yield from _evaluate_members(recorders, active, data.outputs(ensemble), step, grad_norms)
            # Only while every member trains: a checkpoint is of the whole group, and a finished
            # member is not run again, so the group that would resume differs from the one saved.
            if step < t.steps and len(active) == len(configs) and saver.due():
                for recorder in recorders:
                    yield from recorder.flush()
                parts = {"blocks": [{n: v.detach() for n, v in block.items()} for block in ensemble.blocks]}
                yield saver.event(keys, step, parts, optimizer, data.checkpoint_states(step), recorders)
        if step == t.steps or not active:
            break
        if t.fail_at_step is not None and step == t.fail_at_step:
            raise InjectedFailure(f"injected failure at step {step} (training.fail_at_step)")
        x, y, rows = data.batch(step)
        optimizer.zero_grad(set_to_none=True)
        ensemble.backward(loss_fn, x, y, rows)
        if _is_eval_step(step + 1, t):
            grad_norms = ensemble.grad_norms()
        optimizer.step()
    for i in active:
        yield from recorders[i].finish(ensemble_size=float(len(configs)))


def _evaluate_members(recorders: list[Recorder], active: list[int], outputs, step: int, grad_norms) -> Iterator[Event]:
    """Each active member's evaluation row; a diverged member stops here, as it would alone (and
    leaves `active`), the others go on."""
    for i in list(active):
        yield from recorders[i].evaluate(step, grad_norms[i], outputs[i])
        if recorders[i].diverged:
            active.remove(i)
            yield from recorders[i].finish(ensemble_size=float(len(recorders)))


def train_to_result(config: RunConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train one run in this process and return (history, summary); raises if it failed."""
    import pandas as pd

    rows: list[dict[str, float]] = []
    for event in train_one(config):
        if event["kind"] == "metrics":
            rows.extend(event["rows"])
        elif event["kind"] == "failed":
            raise RuntimeError(event["error"])
        else:
            return pd.DataFrame(rows), event["summary"]
    raise RuntimeError("training ended without a summary")
