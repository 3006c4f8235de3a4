r"""The standard baselines of continual learning-unlearning as runner methods (docs/method.md §10).

A baseline is a learn rule and an unlearn rule, each a factory of
:mod:`~ugclu_jax.methods.learn_rules` or :mod:`~ugclu_jax.methods.unlearn_rules`
where its maths is written:

* the unlearning baselines (:data:`UNLEARNING_BASELINES`, the unlearn rules)
  learn with ER's rule, replaying the store, so every method sees the same
  data budget;
* the continual-learning baselines (:data:`CL_BASELINES`, the learn rules)
  have no unlearning mechanism of their own: their unlearn requests fine-tune
  on the remaining store, exactly as ``ft``; so ``er`` and ``ft`` run the same
  algorithm and differ only in their seeds.

CLU pairs ``"X+Y"`` run X's learn rule with Y's unlearn rule (e.g.
``er+salun``, ``ewc+scrub``); the pair's state is X's, and X's bookkeeping
(DER++'s purge, EWC's refresh) still runs on unlearn requests.

Every request starts a fresh SGD optimizer (:func:`ugclu_jax.build_optimizer`)
with a cosine learning rate over the request. Each phase's step is one
function jitted once, with the train state donated; per-request numbers travel
as traced arguments (:class:`~ugclu_jax.RequestHParams`), so requests of the
same batch size never recompile. An empty store (a learn request before
anything is stored) drops the store terms, which traces that phase once more.

Adding a baseline: write its factory in the rule module, with its own
hyperparameters as keyword-only parameters without defaults, and its entry in
that module's registry (``LEARN_RULES`` or ``UNLEARN_RULES``); each new
hyperparameter is a field of
:class:`~ugclu_jax.methods.baselines_config.BaselinesConfig`, its one default,
range and doc line.
"""

from typing import Callable, Optional

from ugclu_jax import hparams as H
from ugclu_jax.methods.base import Context, Method, MethodState, check_settings
from ugclu_jax.methods.baselines_config import BaselinesConfig, check_hyperparameters
from ugclu_jax.methods.learn_rules import LEARN_RULES
from ugclu_jax.methods.rules import Setup, rule_hparams
from ugclu_jax.methods.unlearn_rules import UNLEARN_RULES, random_labels

__all__ = (
  "BASELINE_NAMES",
  "BaselinesConfig",
  "CL_BASELINES",
  "UNLEARNING_BASELINES",
  "baseline",
  "check_hyperparameters",
  "random_labels",
  "split_method_name",
)

UNLEARNING_BASELINES = tuple(UNLEARN_RULES)
CL_BASELINES = tuple(LEARN_RULES)
BASELINE_NAMES = UNLEARNING_BASELINES + CL_BASELINES
# The rule a baseline lacks: the unlearning baselines learn as ER, the
# continual-learning baselines unlearn as FT.
_DEFAULT_LEARN_RULE, _DEFAULT_UNLEARN_RULE = "er", "ft"


def split_method_name(name: str) -> tuple[str, str]:
  """``(learn part, unlearn part)`` of a baseline or a CLU pair ``"X+Y"``.

  Raises:
    ValueError: ``name`` is neither a baseline nor a pair of two baselines.
  """
  if not isinstance(name, str):
    raise ValueError(f"method name must be a string, got {name!r}")
  parts = name.split("+")
  if len(parts) == 1:
    if name not in BASELINE_NAMES:
      raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINE_NAMES)}")
    return name, name
  if len(parts) != 2:
    raise ValueError(f"method pair {name!r} must have exactly two parts, learn+unlearn")
  for part in parts:
    if part not in BASELINE_NAMES:
      raise ValueError(
        f"method pair {name!r}: {part!r} is not a baseline; valid parts: "
        f"{', '.join(BASELINE_NAMES)}"
      )
  return parts[0], parts[1]


def _build(rule: Callable, setup: Setup, hp: BaselinesConfig):
  """The rule's learner or unlearner, given exactly its own hyperparameters."""
  return rule(setup, **{key: getattr(hp, key) for key in rule_hparams(rule)})


def baseline(
  apply_fn,
  name: str,
  hparams: BaselinesConfig = BaselinesConfig(),
  *,
  num_train: int,
  num_classes: int,
  learn_lr: float,
  momentum: float,
  weight_decay: float,
  clip_norm: Optional[float],
  **overrides,
) -> Method:
  """Builds a baseline, or a CLU pair ``"X+Y"`` of two baselines.

  Each rule takes its own hyperparameters from ``hparams``; their defaults,
  ranges, reference values and which defaults were retuned for small data are
  in :class:`~ugclu_jax.methods.baselines_config.BaselinesConfig`.

  Args:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    name: a name of ``BASELINE_NAMES`` or ``"X+Y"`` with X and Y in it.
    hparams: the baselines' hyperparameters.
    num_train: training-set size (DER++ records logits per training index).
    num_classes: number of classes.
    learn_lr: learning rate of learn requests (every learn rule).
    momentum: SGD momentum of every request.
    weight_decay: coupled weight decay of every request.
    clip_norm: global-norm clip of every gradient step, learn and unlearn (GA
      keeps its own ``ga_clip``); None: off.
    **overrides: fields of ``hparams`` to replace, e.g. ``ewc_lambda=5.0``.

  Returns:
    The :class:`Method`; its ``extra`` state is ``()`` except for DER++
    (``{"logits": float32 [num_train, num_classes]}``) and EWC
    (``{"fisher", "anchor"}``, parameter-shaped), and pairs with them as X.

  Raises:
    ValueError: an unknown name or part, or a hyperparameter or setting out of
      range, or an unknown one.
  """
  learn_part, unlearn_part = split_method_name(name)
  hp = H.replace(hparams, overrides)
  check_settings(
    num_train=num_train,
    num_classes=num_classes,
    learn_lr=learn_lr,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  setup = Setup(
    apply_fn=apply_fn,
    name=name,
    num_train=num_train,
    num_classes=num_classes,
    learn_lr=learn_lr,
    momentum=momentum,
    weight_decay=weight_decay,
    clip_norm=clip_norm,
  )
  learner = _build(LEARN_RULES.get(learn_part, LEARN_RULES[_DEFAULT_LEARN_RULE]), setup, hp)
  unlearner = _build(
    UNLEARN_RULES.get(unlearn_part, UNLEARN_RULES[_DEFAULT_UNLEARN_RULE]), setup, hp
  )

  def init(params, model_state):
    return MethodState(params, model_state, learner.init(params, model_state))

  def unlearn(state: MethodState, ctx: Context):
    # Unlearned samples leave every stored artefact before the first step.
    extra = learner.purge(state.extra, ctx)
    params, model_state, cost = unlearner(MethodState(state.params, state.model_state, extra), ctx)
    new = MethodState(params, model_state, extra)
    extra, refresh_cost = learner.refresh(new, ctx)
    return new._replace(extra=extra), cost.add(refresh_cost)

  return Method(name=name, init=init, learn=learner.learn, unlearn=unlearn)
