"""WORKDIR's files: checkpoints (read, written, checksummed), the trainer's checkpointer,
the one-trainer lock. Imports the layers below (`config` for saved configs)."""
