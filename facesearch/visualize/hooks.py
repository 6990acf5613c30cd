"""Where to look inside a model, and context managers that look (record) or intervene (ablate).

A *site* is a named module whose output the visualizer reads: for a conv layer, the ReLU that follows
it (so heat maps and ablations act on what the next layer sees); for a fully connected layer, the
layer itself. Every hook is registered in ``__enter__`` and removed in ``__exit__``, also when the body
raises, so a failed explanation never leaves a model that records or ablates behind it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]  # images (n, 3, H, W) -> outputs (n, d)


@dataclass(frozen=True)
class Site:
    """One place to record: ``name`` as the model calls the layer, ``module`` whose output is read."""

    name: str
    module: nn.Module
    kind: str  # "conv" (output (n, C, h, w)) or "fc" (output (n, C))


def conv_sites(model: nn.Module, convs: Sequence[tuple[str, nn.Module]]) -> list[Site]:
    """Map each conv layer to the ReLU that follows it in registration order (else the conv itself).

    The ReLU's output is the non-negative map the next layer reads; recording it rather than the raw
    conv (or batch-norm) output keeps Grad-CAM-style maps and channel ablations meaningful.
    """
    order = [m for _, m in model.named_modules()]
    position = {id(m): i for i, m in enumerate(order)}
    starts = [position[id(conv)] for _, conv in convs]
    sites = []
    for k, (name, conv) in enumerate(convs):
        end = starts[k + 1] if k + 1 < len(starts) else len(order)
        relus = [m for m in order[starts[k] + 1 : end] if isinstance(m, nn.ReLU)]
        sites.append(Site(name, relus[0] if relus else conv, "conv"))
    return sites


def fc_sites(fcs: Sequence[tuple[str, nn.Module]]) -> list[Site]:
    """Fully connected layers are read at their own output (pre-activation, so a pre-ReLU fc7 works)."""
    return [Site(name, module, "fc") for name, module in fcs]


class _Hooks:
    """Base context manager: subclasses fill ``self._handles`` in ``_register``; exit removes them all."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _register(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False  # never swallow the body's exception

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Recorder(_Hooks):
    """Record every site's output during a forward pass: ``recorder.outputs[name]`` is the tensor.

    The tensors stay attached to the graph, so ``torch.autograd.grad(score, list(outputs.values()))``
    gives all layers' gradients in ONE backward pass. A site that a forward never reaches (say the
    classifier when only the embedding is computed) is simply absent from ``outputs``.
    """

    def __init__(self, sites: Sequence[Site]) -> None:
        super().__init__()
        self.sites = list(sites)
        self.outputs: dict[str, torch.Tensor] = {}

    def _register(self) -> None:
        for site in self.sites:
            self._handles.append(site.module.register_forward_hook(self._hook(site.name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output
            # A following in-place ReLU would overwrite a Linear's recorded output; hand on a copy.
            return output.clone() if isinstance(module, nn.Linear) else None

        return hook

    def ordered(self) -> list[tuple[str, torch.Tensor]]:
        """The recorded outputs in site order (sites that did not fire are left out)."""
        return [(s.name, self.outputs[s.name]) for s in self.sites if s.name in self.outputs]


class ChannelAblation(_Hooks):
    """Run many channel ablations, at many sites, in ONE forward pass of ONE image.

    Row 0 of the batch stays clean. At each site, in forward order, the clean row's output (1, C, ...)
    is copied once per mask row of that site's ``masks`` (B, C) (0 = channel off) and the copies are
    appended to the batch; later layers run on all rows. So every layer before a site runs once for
    all of that site's ablations, and the batch grows as the pass goes deeper.
    ``slices[name]`` gives the output rows holding that site's ablated copies.
    """

    def __init__(self, ablations: Sequence[tuple[Site, torch.Tensor]]) -> None:
        super().__init__()
        self.ablations = list(ablations)
        self.slices: dict[str, slice] = {}

    def _register(self) -> None:
        for site, masks in self.ablations:
            self._handles.append(site.module.register_forward_hook(self._hook(site.name, masks)))

    def _hook(self, name: str, masks: torch.Tensor):
        def hook(module, inputs, output):
            n = output.shape[0]
            if masks.shape[1] != output.shape[1]:
                raise ValueError(f"{name}: {masks.shape[1]} mask columns for {output.shape[1]} channels")
            shape = (masks.shape[0], output.shape[1]) + (1,) * (output.dim() - 2)
            copies = output[:1] * masks.to(output.device, output.dtype).view(shape)  # (B, C, ...)
            self.slices[name] = slice(n, n + masks.shape[0])
            return torch.cat([output, copies])

        return hook
