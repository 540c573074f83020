"""The composition root: the one place that knows every layer (handlers, realtime, storage),
chooses the store and wires the parts together. No layer imports it."""
