"""Data: sources into uint8 splits (the decoded cache, tfds, image folders, synthetic), one
image format, the device-resident pipeline and the training augmentations. Imports `core`."""
