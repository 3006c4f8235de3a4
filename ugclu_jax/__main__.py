from ugclu_jax.cli import entry

entry()
