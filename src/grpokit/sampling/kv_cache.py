"""KV caches for the sampler: a preallocated cache written in place, and one row's cache kept
after its turn ends so that the next turn continues from it (multi-turn episodes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer with room for ``capacity`` positions, written in place.

    ``keys`` / ``values`` are views of the filled prefix, so attention sees only real positions.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._keys = self._values = None

    def update(self, key_states, value_states, *args, **kwargs):
        if self._keys is None:
            batch, heads, _, dim = key_states.shape
            shape = (batch, heads, self.capacity, dim)
            self._keys = key_states.new_zeros(shape)
            self._values = value_states.new_zeros(shape[:3] + value_states.shape[-1:])
            self.device, self.is_initialized = key_states.device, True
        end = self.length + key_states.shape[-2]
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def fill(self, keys: list[torch.Tensor], values: list[torch.Tensor], width: int) -> None:
        """Start from per-row ``(heads, length, dim)`` keys and values, right-aligned in the
        first ``width`` positions (the gap before a shorter row stays zero and is masked)."""
        heads, _, dim = keys[0].shape
        self._keys = keys[0].new_zeros((len(keys), heads, self.capacity, dim))
        self._values = values[0].new_zeros((len(keys), heads, self.capacity, values[0].shape[-1]))
        for row, (k, v) in enumerate(zip(keys, values)):
            self._keys[row, :, width - k.shape[1] : width] = k
            self._values[row, :, width - v.shape[1] : width] = v
        self.device, self.is_initialized, self.length = keys[0].device, True, width
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, 0)
        self._values = self._values.repeat_interleave(repeats, 0)
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._refresh()


def preallocated_cache(model: PreTrainedModel, capacity: int) -> Cache:
    """A cache whose layers hold ``capacity`` positions each."""
    layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(layers)])


@dataclass
class RowCache:
    """One row's keys and values, real positions only: per layer ``(heads, length, dim)``, for
    every token of its context but the last one sampled (which has not been fed yet)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


def keep_row_caches(cache, mask, live, rows, lengths, width: int, row_caches) -> None:
    """Copy out the caches of ``rows`` (positions in the live batch): the real context columns
    before ``width`` and the sampled tokens fed so far (all but each row's last)."""
    for row in rows.tolist():
        original = int(live[row])
        columns = torch.cat([mask[row, :width].nonzero().squeeze(1),
                             torch.arange(width, width + int(lengths[original]) - 1, device=mask.device)])
        row_caches[original] = RowCache([layer._keys[row][:, columns] for layer in cache.layers],
                                        [layer._values[row][:, columns] for layer in cache.layers])
