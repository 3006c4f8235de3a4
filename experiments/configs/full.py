"""Split Fashion-MNIST on all 60,000 training images, 5 tasks x 2 classes: the base of the
scenarios that `experiments/run_all.py` runs (it sets the model, the stream and the seeds).

Every method of the `default` config (the oracle's twin among them) and the
random-mask ablation `ugclu_randmask`. The oracle is converged:
500 training images per class are held out as a validation split (no method learns
them), and the oracle stops early on them within 30 epochs. A learn request runs 2
epochs over its 10,800 images at batch 128; an unlearn request runs 300 iterations.
Evaluation sets hold at most 10,000 samples.
"""

from ugclu_jax.config import BaselinesConfig, DataConfig, ExperimentConfig, TrainConfig, UGCLUConfig
from ugclu_jax.configs.default import get_config as default_config


def get_config() -> ExperimentConfig:
  return ExperimentConfig(
    name="full",
    seed=0,
    stream="L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3",
    methods=(*default_config().methods, "ugclu_randmask"),
    data=DataConfig(
      name="fashion_mnist",
      classes_per_task=2,
      validation_per_class=500,
      store_size=2000,
      batch_size=128,
      eval_batch_size=1000,
      max_eval=10000,
    ),
    train=TrainConfig(
      model="mlp",
      learn_epochs=2,
      min_learn_iterations=64,
      learning_rate=0.02,
      unlearn_iterations=300,
      oracle_max_epochs=30,
    ),
    ugclu=UGCLUConfig(unlearn_lr=0.02, forget_freq=5, fisher_batches=8, clip=1.0),
    baselines=BaselinesConfig(ewc_lambda=5.0),
  )
