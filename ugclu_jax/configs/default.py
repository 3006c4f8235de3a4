"""Split Fashion-MNIST, 5 tasks x 2 classes, small CNN, a stream mixing all three unlearning kinds.

    make run        (or: python -m ugclu_jax run --config default --workdir runs/default)

UG-CLU, its four ablations, the eleven baselines, the retrained oracle and its twin
(the noise floor). The oracle stops early on 100 held-out validation images per
class, within 30 epochs. To fit a 2-core CPU, each class keeps 500 training samples
(a seeded draw), a learn request runs 2 epochs but at least 64 iterations, an
unlearn request runs 80 iterations, and every evaluation set holds at most 2000
samples (the test set: the same 200 per class throughout). Falls back to
scikit-learn digits when the Fashion-MNIST IDX files are missing
(scripts/get_data.sh installs Debian's dataset-fashion-mnist).
"""

from ugclu_jax.config import BaselinesConfig, DataConfig, ExperimentConfig, TrainConfig, UGCLUConfig


def get_config() -> ExperimentConfig:
  return ExperimentConfig(
    name="default",
    seed=0,
    stream="L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3",
    methods=(
      "ugclu",
      "ugclu_none",
      "ugclu_hvp",
      "ugclu_nomask",
      "ugclu_noadapt",
      "ft",
      "ga",
      "neggrad_plus",
      "rl",
      "salun",
      "scrub",
      "naive",
      "er",
      "der_pp",
      "lwf",
      "ewc",
      "retrain_twin",
    ),
    data=DataConfig(
      name="fashion_mnist",
      fallback="digits",
      classes_per_task=2,
      max_train_per_class=500,
      validation_per_class=100,
      store_size=1000,
      batch_size=64,
      eval_batch_size=1000,
      max_eval=2000,
    ),
    # A two-class request of 1000 samples is 32 iterations at 2 epochs: too few
    # to separate pullover from shirt (the CNN and the oracle stayed at chance).
    train=TrainConfig(
      model="cnn",
      learn_epochs=2,
      min_learn_iterations=64,
      learning_rate=0.02,
      unlearn_iterations=80,
      oracle_max_epochs=30,
    ),
    # The target direction takes the learn rule's clip (1), not the reference's 7
    # (ResNet-18 at lr 0.01): on the CNN at lr 0.02, unlearning 5 % random samples of
    # pullover/shirt with clip 7 left a constant predictor (remaining accuracy 0.50);
    # with clip 1 it kept 0.64 of 0.78 (tuning seeds 1 and 100).
    ugclu=UGCLUConfig(unlearn_lr=0.02, forget_freq=5, fisher_batches=4, clip=1.0),
    # The CNN's head kernel reaches a Fisher diagonal of about 14 after the first
    # task; SGD with momentum 0.9 on the EWC penalty is stable only while
    # ewc_lambda * 14 * 0.02 < 3.8, so the library default of 100 diverges here.
    baselines=BaselinesConfig(ewc_lambda=5.0),
  )
