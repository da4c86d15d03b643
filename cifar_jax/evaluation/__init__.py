"""Evaluation: exact scores of a state on a whole split, and statistics of groups of runs.
Imports `core`, `data`, `training`."""
