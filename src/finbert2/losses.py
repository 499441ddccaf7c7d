"""Cross-entropy over a vocabulary projection, fused: the loss of ``F.cross_entropy(hidden @ W.T + b, t)``
without the full-vocabulary float32 logits, log-probabilities and their gradient in memory.

The MLM head at masked positions and RetroMAE's decoder (every token reconstructed) project a few
thousand positions onto a 111k-250k-piece vocabulary. Autograd's path (``linear`` -> ``float()`` ->
``log_softmax`` -> ``nll_loss``) then makes seven passes over a matrix of 1-2 GB: the float copy, the
log-softmax and its backward, the zero-filled NLL gradient, the cast back. On a CPU those passes,
memory-bound, measured 27-38% of a RetroMAE training step (``benchmarks/retromae_vs_mlm``), more than
the matrix products around them.

Here the projection runs as one matrix product; the softmax, the loss and the gradient of the logits
are computed in row blocks small enough to stay in the CPU cache, and the gradient overwrites the
logits (in the compute dtype, as autograd would hold it). The backward is the two matrix products.
Same loss and gradients as the autograd path (float32 softmax either way); tested to float32 rounding.
"""

from __future__ import annotations

import torch

# Rows of float32 logits per block: small enough to stay in a core's cache (111,537 pieces: 18 rows).
BLOCK_BYTES = 8 << 20


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, block_rows):
        logits = hidden @ weight.t()  # (N, V) in the compute dtype; becomes d loss_sum / d logits in place
        count = logits.shape[0]
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least, as autocast's loss
        total = torch.zeros((), dtype=softmax_dtype, device=logits.device)
        bias_grad = torch.zeros(logits.shape[1], dtype=softmax_dtype, device=logits.device) if bias is not None else None
        offsets = torch.arange(min(block_rows, count), device=logits.device)
        for start in range(0, count, block_rows):
            block = logits[start:start + block_rows].to(softmax_dtype)
            if bias is not None:
                block += bias
            target = targets[start:start + block_rows]
            log_total = torch.logsumexp(block, dim=1)
            total += (log_total - block.gather(1, target[:, None]).squeeze(1)).sum()
            block.sub_(log_total[:, None]).exp_()  # softmax
            block[offsets[: len(target)], target] -= 1.0  # softmax - one-hot: the gradient of the summed loss
            if bias_grad is not None:
                bias_grad += block.sum(dim=0)
            logits[start:start + block_rows] = block
        ctx.save_for_backward(hidden, weight, logits, bias_grad)
        ctx.count = count
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, logits_grad, bias_grad = ctx.saved_tensors
        scale = grad_output / ctx.count  # the loss is the mean over rows
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (logits_grad @ weight).mul_(scale.to(hidden.dtype))
        if ctx.needs_input_grad[1]:
            grad_weight = (logits_grad.t() @ hidden).mul_(scale.to(weight.dtype))
        if bias_grad is not None and ctx.needs_input_grad[2]:
            grad_bias = (bias_grad * scale).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` (``hidden`` (N, H), ``weight`` (V, H)) against
    ``targets`` (N,), every target a valid class: select the labelled rows first.

    Under autocast the projection runs in the autocast dtype (as ``nn.Linear`` would) and the softmax in
    float32 (as ``F.cross_entropy(logits.float(), ...)``); gradients reach ``hidden``, ``weight`` and
    ``bias`` (a tied embedding matrix included) through autograd as usual.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)  # differentiable casts, as autocast's own
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    block_rows = max(1, block_bytes // (4 * weight.shape[0]))
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, block_rows)
