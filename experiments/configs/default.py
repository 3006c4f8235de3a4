"""The `default` config; it lives in `ugclu_jax/configs/default.py` so that installs ship it."""

from ugclu_jax.configs.default import get_config

__all__ = ("get_config",)
