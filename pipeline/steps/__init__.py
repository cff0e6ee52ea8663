"""The science: pure functions on arrays, one step per module (units in names and docstrings)."""
