"""The training loss of S stacked MLPs (a vectorised group, `train.Ensemble`), backward written out.

For member s with parameters (E, W_1, b_1, ..., W_L, b_L, W_r, b_r) and readout multiplier m
(muP's 1/r, 1 under sp), on a batch of B examples:

    h_0 = [E[x_1], ..., E[x_k]]            (token embeddings, concatenated; vectors pass as they are)
    h_l = relu(h_{l-1} W_l^T + b_l)        (l = 1..L)
    a   = h_L W_r^T + b_r,   z = m a       (z: the logits)
    loss_s = 1/B sum_b [logsumexp(z_b) - z_{b, y_b}]

and, with g_s the gradient reaching loss_s (1 for a sum of the members' losses),

    da   = g_s m / B (softmax(z) - onehot(y))
    dW_r = da^T h_L,   db_r = sum_b da,   dh_L = da W_r
    dW_l = dh_l'^T h_{l-1},  db_l = sum_b dh_l',  dh_{l-1} = dh_l' W_l,  with dh_l' = dh_l [h_l > 0]
    dE   = the rows of dh_0 added into the rows of the tokens they looked up.

Why by hand: a small model's step is mostly per-operation costs, not arithmetic. Autograd's
graph of this loss has a node per operation (about twenty for one hidden layer), copies each
transposed weight's gradient into its parameter's layout, and makes three passes over the
(S, B, classes) logits for the cross-entropy's backward, one of them an exp that a trained
classifier's very negative log-probabilities send down a slow path; here the backward is one
function of a dozen kernels, working in place (benchmarks/RESULTS.md: 10 - 13 % of an ensemble's
time at width 32). Same arithmetic: tests/test_stacked_mlp.py checks every member's loss and
gradient against its own model's through autograd (float64, sp and muP, tokens and vectors,
confident and not), and tests/test_ensemble.py every member against its run trained alone.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=64)
def table_offsets(members: int, rows: int, dims: int, device: torch.device) -> torch.Tensor:
    """Where each member's table starts in S stacked tables flattened, (S, 1, ...) with `dims`
    dimensions, to add to token ids: made once, not at every step."""
    return (torch.arange(members, device=device) * rows).view(-1, *[1] * (dims - 1))


# Below log(float32's smallest normal number, 1.2e-38) = -87.3, exp's result is subnormal or zero,
# and CPU kernels take a path about ten times slower (benchmarks/RESULTS.md); bfloat16 has the
# same range. Other dtypes are not clamped (float64's limit, -708, is not where training goes).
EXP_FLOOR = {torch.float32: -87.0, torch.bfloat16: -87.0}


def _clamped_exp_(log_probs: torch.Tensor) -> torch.Tensor:
    """softmax from log-softmax, in place, the log-probabilities first raised to -87 in float32.
    A trained classifier's wrong classes sit below it; each such class's probability becomes
    exp(-87) = 1.6e-38 instead of a smaller number or 0, so its gradient entry gains at most
    1.6e-38 / batch: nothing against the others, an AdamW step of ~lr x 1e-30 where all else is 0."""
    floor = EXP_FLOOR.get(log_probs.dtype)
    if floor is not None:
        log_probs.clamp_min_(floor)
    return log_probs.exp_()


class StackedMLPCrossEntropy(torch.autograd.Function):
    """(S,) losses of S stacked MLPs: `apply(x, y, readout_mult, table, W_1, b_1, ..., W_r, b_r)`,
    x (S, B, k) tokens (with `table` (S, vocab, d) their embeddings) or (S, B, in) vectors (`table`
    None), y (S, B) labels, each W (S, out, in) and b (S, out) as `stack_module_state` stacks them."""

    @staticmethod
    def forward(ctx, x, y, readout_mult: float, table, *layers):
        z, tokens, inputs = stacked_logits(x, readout_mult, table, layers)
        log_probs = z.log_softmax(-1)
        ctx.readout_mult = readout_mult
        ctx.save_for_backward(log_probs, y, tokens, table, *inputs, *layers)
        return -log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)

    @staticmethod
    def backward(ctx, grad_losses):
        log_probs, y, tokens, table, *rest = ctx.saved_tensors
        inputs, layers = rest[: len(rest) // 3], rest[len(rest) // 3 :]
        members, batch = y.shape
        # da = g m / B (softmax(z) - onehot(y)), in place of the saved log-probabilities (so a
        # second backward through this graph is refused by autograd rather than wrong)
        dz = _clamped_exp_(log_probs)
        dz.scatter_add_(-1, y.unsqueeze(-1), dz.new_full((members, batch, 1), -1.0))
        dz.mul_((grad_losses * (ctx.readout_mult / batch)).view(-1, 1, 1))
        grads: list[torch.Tensor | None] = [None] * len(layers)
        for i in reversed(range(len(inputs))):
            weight, h = layers[2 * i], inputs[i]
            grads[2 * i] = torch.bmm(dz.transpose(1, 2), h)
            grads[2 * i + 1] = dz.sum(1)
            if i == 0 and table is None:
                break
            dz = torch.bmm(dz, weight)
            if i > 0:  # through the relu of the layer that made h
                dz = torch.ops.aten.threshold_backward(dz, h, 0)
        grad_table = None
        if table is not None:
            flat = torch.zeros_like(table).flatten(0, 1)
            grad_table = flat.index_add_(0, tokens, dz.reshape(-1, table.shape[2])).view_as(table)
        return None, None, None, grad_table, *grads


def stacked_layers(params: dict[str, torch.Tensor], depth: int) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(embedding tables or None, [W_1, b_1, ..., W_r, b_r]) from stacked parameters under
    `models.MLP`'s names, for an MLP of `depth` hidden layers."""
    layers = []
    for i in range(depth):
        layers += [params[f"hidden.{2 * i}.weight"], params[f"hidden.{2 * i}.bias"]]
    layers += [params["readout.weight"], params["readout.bias"]]
    return params.get("embed.weight"), layers


def stacked_logits(x, readout_mult: float, table, layers) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """The forward of S stacked MLPs: (logits z, the flat token ids looked up or None, each
    linear layer's input). One lookup into the stacked tables and one batched matmul per layer;
    each member's logits equal its own model's forward to float rounding."""
    members, batch = x.shape[:2]
    tokens = None
    h = x
    if table is not None:
        tokens = (x + table_offsets(members, table.shape[1], x.dim(), x.device)).flatten()
        h = table.flatten(0, 1).index_select(0, tokens).view(members, batch, -1)
    inputs = [h]
    for weight, bias in zip(layers[0:-2:2], layers[1:-2:2], strict=True):
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)).relu_()
        inputs.append(h)
    z = torch.baddbmm(layers[-1].unsqueeze(1), h, layers[-2].transpose(1, 2))
    return (z.mul_(readout_mult) if readout_mult != 1 else z), tokens, inputs


def stacked_mlp_cross_entropy(params: dict[str, torch.Tensor], x, y, depth: int, readout_mult: float):
    """(S,) cross-entropy losses of S stacked MLPs of `depth` hidden layers (`models.MLP`'s names)."""
    table, layers = stacked_layers(params, depth)
    return StackedMLPCrossEntropy.apply(x, y, readout_mult, table, *layers)
