"""A run: `train_and_evaluate` with its periodic actions, and the evaluator process. Imports
every layer below; the entry points (`main`, `experiment`, `benchmark`, `compare`) import it."""
