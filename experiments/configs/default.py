"""Split Fashion-MNIST, 5 tasks x 2 classes, small CNN, a stream mixing all three unlearning kinds.

    make run        (or: python -m ugclu_jax run --config default --workdir runs/default)

Falls back to scikit-learn digits when the Fashion-MNIST IDX files are missing
(scripts/get_data.sh installs Debian's dataset-fashion-mnist).
"""

from ugclu_jax.config import DataConfig, ExperimentConfig, TrainConfig, UGCLUConfig


def get_config() -> ExperimentConfig:
  return ExperimentConfig(
      name="default",
      seed=0,
      stream="L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3",
      methods=("ugclu", "ugclu_none", "ugclu_hvp", "ugclu_nomask", "ugclu_noadapt"),
      data=DataConfig(name="fashion_mnist", fallback="digits", classes_per_task=2,
                      store_size=2000, batch_size=128, eval_batch_size=1000, max_eval=3000),
      train=TrainConfig(model="cnn", learn_epochs=1, learning_rate=0.05,
                        unlearn_iterations=150),
      ugclu=UGCLUConfig(unlearn_lr=0.01, forget_freq=5, fisher_batches=4),
  )
