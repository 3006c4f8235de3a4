"""The `smoke` config; it lives in `ugclu_jax/configs/smoke.py` so that installs ship it."""

from ugclu_jax.configs.smoke import get_config

__all__ = ("get_config",)
