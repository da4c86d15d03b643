"""The check of a whole config, walking the fields every layer below declares, and the
migration of configs saved by earlier releases."""
