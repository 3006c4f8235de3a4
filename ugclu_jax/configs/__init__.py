"""The named experiment configs (``--config smoke``, ``--config default``), shipped in the package.

Each module's ``get_config()`` returns an :class:`~ugclu_jax.config.ExperimentConfig`;
:func:`ugclu_jax.config.load_config` finds them by name.
"""
