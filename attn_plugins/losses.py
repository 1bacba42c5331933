"""Auxiliary losses of attention blocks, collected from any host model (pure PyTorch).

A block that adds a term to the training loss (PyramidAttention's PCA loss) keeps it, already
weighted, from its last training forward and hands it out once through `pop_auxiliary_losses()`.
Wherever the block sits (injected into a timm or torchvision model, built by an OpenMMLab
plugin cfg, inside a head), the training loop adds the collected terms to its loss:

    loss = criterion(model(x), y) + sum(attn_plugins.auxiliary_losses(model).values())

mmengine training loops use `AuxiliaryLossHook` (attn_plugins.integrations.mmengine), which does
this in every `train_step`. Each loss is handed out once, so a head that adds its own block's
loss and a hook that collects from the whole model never count it twice.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

POP_METHOD = 'pop_auxiliary_losses'


def auxiliary_losses(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weighted auxiliary losses of the last training forward of every block in `model`,
    keyed '<module path>.<loss name>' (e.g. 'layer4.2.attn.loss_pca'); each one is returned
    once (a second call without a new forward gives {}). Empty when no block has any."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"auxiliary_losses: expected an nn.Module, got {type(model).__name__}")
    losses: Dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        pop = getattr(module, POP_METHOD, None)
        if pop is None:
            continue
        for name, value in pop().items():
            losses[f'{path}.{name}' if path else name] = value
    return losses


def total_auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of `auxiliary_losses(model)`, or None when there is none."""
    losses = list(auxiliary_losses(model).values())
    return torch.stack([loss.reshape(()) for loss in losses]).sum() if losses else None
