"""UG-CLU's hyperparameters (:func:`ugclu_jax.methods.ugclu.ugclu`), each defined once here.

Standard library only, so that the experiment config (:mod:`ugclu_jax.config`),
which holds them as ``ugclu``, imports no JAX.
"""

import dataclasses

from ugclu_jax.hparams import COUNT, NON_NEGATIVE, POSITIVE, UNIT, Checked, field


MASK_KINDS = ("balanced", "random", "norm")
"""The values of :attr:`UGCLUConfig.mask_kind`."""


@dataclasses.dataclass(frozen=True)
class UGCLUConfig(Checked):
  """UG-CLU's options (docs/method.md §7 defaults; [derived] choices are options).

  Every request also takes the run's momentum and weight decay, and a learn
  request its learning rate and clip (``train.*``, keywords of the factory).

  Attributes:
    mode: compensation ``fast_slow``, ``hvp`` or ``none``
      (:data:`ugclu_jax.steps.MODES`).
    unlearn_lr: learning rate of unlearn requests.
    forget_freq: a target step every ``forget_freq`` iterations (unlearn).
    learn_freq: a target step every ``learn_freq`` iterations (learn).
    a_unlearn: :math:`a_{U0}` (cosine-decayed over the request), ``>= 0``.
    a_learn: :math:`a_L`.
    a_remain: :math:`a_R`.
    clip: global-norm clip of an unlearn request's two gradients, the target
      direction and the remain gradient (0: off).
    temperature: :math:`\\lambda` of the adaptive forget weights (0: plain GA).
    learn_temperature: learn-side weights (0: uniform; negative: hard samples up).
    mask: use the balanced saliency mask on unlearn requests.
    mask_threshold: :math:`\\gamma`.
    mask_kind: ``balanced`` (the saliency mask), ``random``: the ablation, a
      random mask with the balanced mask's number of ones in every parameter
      (:func:`ugclu_jax.random_mask_like`, seed stream ``ugclu.random_mask``),
      or ``norm``: no mask at the masked step's size, every coordinate moves
      and the target direction is as long as the balanced-masked one
      (:func:`ugclu_jax.target_direction`'s ``mask_as_norm``).
    learn_mask: also mask learn requests with ``F_L / F_R >= learn_mask_threshold``.
    learn_mask_threshold: :math:`\\gamma_L`.
    fisher_batches: batches for each Fisher diagonal.
    beta: :math:`\\beta` of the explicit compensation (``hvp``); 0 = the step's lr.
    learn_beta: :math:`\\beta` on learn requests (a learn step with a store is a
      fused step too); 0 = as ``beta``. Set it to sweep ``beta`` on the unlearn
      requests alone.
    order: compensation order (1, or the Neumann series length).
    damping: :math:`\\delta`.
    curvature: ``hessian`` or ``ggn`` (:data:`ugclu_jax.steps.CURVATURES`).
    slow_step_size: fast-slow interpolation :math:`\\beta_{slow}` (1 = none).
    sync_period: fast steps between slow syncs (0: one fast-slow cycle).
    ascent_bound: bounded ascent: a forget sample whose loss exceeds
      ``ascent_bound * log(C)`` is forgotten (misclassified, for a bound of 1
      or more) and is no longer pushed (0: unbounded). Unbounded ascent drove
      the CNN's logits to about ±8000 in measured runs (NegGrad+), and the next
      learn request collapsed. At 1 (p_y < 1/C) the pushes stop too early:
      forgotten samples drift back under the remain steps (forget accuracy 0.49
      after a task-unlearning request on digits); 3 (p_y < 1/C^3) did not.
  """

  KEY = "ugclu"

  mode: str = "fast_slow"
  unlearn_lr: float = field(0.01, POSITIVE)
  forget_freq: int = field(5, COUNT)
  learn_freq: int = field(1, COUNT)
  a_unlearn: float = field(25.0, NON_NEGATIVE)
  a_learn: float = field(1.0, NON_NEGATIVE)
  a_remain: float = field(1.0, NON_NEGATIVE)
  clip: float = field(7.0, NON_NEGATIVE)
  temperature: float = field(0.5, NON_NEGATIVE)
  learn_temperature: float = 0.0
  mask: bool = True
  mask_threshold: float = field(1.0, NON_NEGATIVE)
  mask_kind: str = "balanced"
  learn_mask: bool = False
  learn_mask_threshold: float = field(1.0, NON_NEGATIVE)
  fisher_batches: int = field(8, COUNT)
  beta: float = field(0.0, NON_NEGATIVE)
  learn_beta: float = field(0.0, NON_NEGATIVE)
  order: int = field(1, COUNT)
  damping: float = field(0.0, NON_NEGATIVE)
  curvature: str = "hessian"
  slow_step_size: float = field(1.0, UNIT)
  sync_period: int = field(0, NON_NEGATIVE)
  ascent_bound: float = field(3.0, NON_NEGATIVE)
