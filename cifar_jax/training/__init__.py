"""Training: schedules, optimizers, the state, the pure step, the builder of a run's pieces,
the loop and where its data live. Imports `core`, `data`, `models`."""
