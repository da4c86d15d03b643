"""What every layer uses: the user's error, config fields and registries, sweeps, devices
(the one `jax.pmap`), the terminal and the writers of logs and summaries. Imports nothing
else of cifar_jax."""
