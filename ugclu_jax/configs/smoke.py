"""Smoke run: scikit-learn digits, MLP, every request kind; well under a minute on 2 CPU cores.

python -m ugclu_jax run --config smoke --workdir runs/smoke
"""

from ugclu_jax.config import DataConfig, ExperimentConfig, TrainConfig, UGCLUConfig


def get_config() -> ExperimentConfig:
  return ExperimentConfig(
    name="smoke",
    seed=0,
    stream="L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3",
    methods=("ugclu",),
    data=DataConfig(
      name="digits",
      classes_per_task=2,
      store_size=300,
      batch_size=32,
      eval_batch_size=256,
      max_eval=2000,
    ),
    train=TrainConfig(model="mlp", learn_epochs=4, learning_rate=0.05, unlearn_iterations=60),
    ugclu=UGCLUConfig(unlearn_lr=0.01, forget_freq=5, fisher_batches=4),
  )
