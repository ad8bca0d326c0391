"""S stacked MLPs (a vectorised group, `train.Ensemble`): their forward, and their training
gradients written out.

For member s with parameters (E, W_1, b_1, ..., W_L, b_L, W_r, b_r) and readout multiplier m
(muP's 1/r, 1 under sp), on a batch of B examples:

    h_0 = [E[x_1], ..., E[x_k]]            (token embeddings, concatenated; vectors pass as they are)
    h_l = relu(h_{l-1} W_l^T + b_l)        (l = 1..L)
    a   = h_L W_r^T + b_r,   z = m a       (z: the logits)
    loss_s = 1/B sum_b [logsumexp(z_b) - z_{b, y_b}]

and the gradients of sum_s loss_s (each member's own, as members share nothing), with c = m / B:

    dz   = softmax(z) - onehot(y)          (the cross-entropy's gradient, before the factor c)
    dW_r = c dz^T h_L,   db_r = c sum_b dz,   dh_L = dz (c W_r)
    dW_l = dh_l'^T h_{l-1},  db_l = sum_b dh_l',  dh_{l-1} = dh_l' W_l,  with dh_l' = dh_l [h_l > 0]
    dE   = the rows of dh_0 added into the rows of the tokens they looked up.

Why by hand, and without autograd: a small model's step is mostly per-operation costs, not
arithmetic. Autograd's graph of this loss has a node per operation (about twenty for one hidden
layer), copies each transposed weight's gradient into its parameter's layout, and makes several
passes over the (S, B, classes) logits for the cross-entropy (a log-softmax, then an exp, a scatter
and a scale in its backward); here one softmax gives dz, the factor c goes on the small tensors
(W_r and the readout's gradients) rather than on dz, and nothing is recorded for a backward pass
(benchmarks/RESULTS.md). The loss's value is not computed: training never reads it (evaluation
computes its own, `observables`). Same arithmetic as autograd's: tests/test_stacked_mlp.py checks
every member's gradient against its own model's (float64 and float32, sp and muP, tokens and
vectors, confident and not, padded batches), and tests/test_ensemble.py and tests/test_groups.py
every member against its run trained alone.
"""

from __future__ import annotations

import functools

import torch

from scalesweep.zoo.base import IGNORE


@functools.lru_cache(maxsize=64)
def table_offsets(members: int, rows: int, dims: int, device: torch.device) -> torch.Tensor:
    """Where each member's table starts in S stacked tables flattened, (S, 1, ...) with `dims`
    dimensions, to add to token ids: made once, not at every step."""
    return (torch.arange(members, device=device) * rows).view(-1, *[1] * (dims - 1))


def linear_names(depth: int) -> list[tuple[str, str]]:
    """(weight, bias) names of each linear layer of an MLP of `depth` hidden layers, input first
    (`models.MLP`'s names)."""
    return [(f"hidden.{2 * i}.weight", f"hidden.{2 * i}.bias") for i in range(depth)] + [
        ("readout.weight", "readout.bias")
    ]


def stacked_layers(
    params: dict[str, torch.Tensor], depth: int
) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(embedding tables or None, [(W_1, b_1), ..., (W_r, b_r)]) from stacked parameters under
    `models.MLP`'s names, for an MLP of `depth` hidden layers."""
    return params.get("embed.weight"), [(params[weight], params[bias]) for weight, bias in linear_names(depth)]


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
    for weight, bias in layers[:-1]:
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)).relu_()
        inputs.append(h)
    weight, bias = layers[-1]
    z = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
    return (z.mul_(readout_mult) if readout_mult != 1 else z), tokens, inputs


@torch.no_grad()
def stacked_mlp_grads(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    depth: int,
    readout_mult: float,
    rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The gradient of the sum of S stacked MLPs' mean cross-entropies on their own batches (x
    (S, B, k) tokens or (S, B, in) vectors, y (S, B) labels), for every parameter under
    `models.MLP`'s names: member s's slice is its own loss's gradient. `rows` (S, B): each member's
    loss is over the rows weighted 1 and not labelled IGNORE (`data.masked_cross_entropy`: batches
    of different lengths padded), so B above is its count of them and dz is 0 on the others.
    Formulas: the module's docstring."""
    table, layers = stacked_layers(params, depth)
    z, tokens, inputs = stacked_logits(x, readout_mult, table, layers)
    dz = z.softmax(-1)
    dz.scatter_add_(-1, y.clamp_min(0).unsqueeze(-1), dz.new_full((*y.shape, 1), -1.0))
    if rows is None:
        counts = dz.new_full((len(y), 1, 1), y.shape[1])
    else:  # each member's own rows, not IGNORE: dz is 0 on the others
        scored = (rows.to(dz.dtype) * (y != IGNORE)).unsqueeze(-1)
        dz.mul_(scored)
        counts = scored.sum(1, keepdim=True)
    scale = readout_mult / counts  # c, (S, 1, 1)
    names = linear_names(depth)
    grads: dict[str, torch.Tensor] = {}
    for i in reversed(range(len(inputs))):
        (weight_name, bias_name), (weight, _), h = names[i], layers[i], inputs[i]
        grads[weight_name], grads[bias_name] = torch.bmm(dz.transpose(1, 2), h), dz.sum(1)
        readout = i == depth
        if readout:  # c on its gradients and on W_r rather than on dz
            grads[weight_name].mul_(scale)
            grads[bias_name].mul_(scale.view(-1, 1))
        if i == 0 and table is None:
            break
        dz = torch.bmm(dz, weight * scale if readout else weight)
        if i > 0:  # through the relu of the layer that made h
            dz = torch.ops.aten.threshold_backward(dz, h, 0)
    if table is not None:
        flat = torch.zeros_like(table).flatten(0, 1)
        grads["embed.weight"] = flat.index_add_(0, tokens, dz.reshape(-1, table.shape[2])).view_as(table)
    return grads
