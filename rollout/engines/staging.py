"""Weight pushes to a GPU through reused page-locked (pinned) host buffers.

A push reads each tensor from the weight channel, which is ordinary shared memory. Copying
pageable memory to a GPU is synchronous and goes through the driver's own small bounce buffer;
from pinned memory the copy is one DMA that runs while the next tensor is read. So each tensor is
first copied into one of a few pinned buffers (grown to the largest tensor seen, then reused for
every push), then sent with a non-blocking copy; before a buffer is reused, the copy that last
read it is waited for (a CUDA event per buffer). Both engines push this way on a GPU (the vLLM
worker hands the device tensors to vLLM's weight loaders, the hf engine copies them into its
parameters); on a CPU there is nothing to stage and `for_device` returns None.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class PinnedStaging:
    """Host-to-device copies through `slots` reused host buffers (pinned unless `pin` is off,
    which only the CPU tests use)."""

    def __init__(self, device: Any, slots: int = 2, pin: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.pin = pin
        self._buffers: list[Any] = [None] * slots
        self._events: list[Any] = [None] * slots
        self._next = 0

    def to_device(self, src: Any) -> Any:
        """`src` (a CPU tensor) on the device; the copy may still be in flight, ordered before
        any later work on the current stream."""
        import torch

        k = self._next
        self._next = (k + 1) % len(self._buffers)
        if self._events[k] is not None:
            self._events[k].synchronize()  # the copy that last read buffer k is done
        nbytes = src.numel() * src.element_size()
        if self._buffers[k] is None or self._buffers[k].numel() < nbytes:
            self._buffers[k] = None  # free the old buffer before pinning a bigger one
            self._buffers[k] = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
        host = self._buffers[k][:nbytes].view(src.dtype).view(src.shape)
        host.copy_(src)
        out = host.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._events[k] = torch.cuda.Event()
            self._events[k].record()
        elif out.data_ptr() == host.data_ptr():
            out = out.clone()  # same device (the CPU tests): the buffer is about to be reused
        return out

    def staged(self, named: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """(name, device tensor) for each (name, CPU tensor)."""
        for name, t in named:
            yield name, self.to_device(t)

    def synchronize(self) -> None:
        """Wait for every copy issued so far."""
        for e in self._events:
            if e is not None:
                e.synchronize()


def for_device(device: Any) -> PinnedStaging | None:
    """A staging area for pushes to `device` when it is a GPU, else None (nothing to stage)."""
    import torch

    return PinnedStaging(device) if torch.device(device).type == "cuda" else None
