"""The named random streams of a run: every seeded draw, and the integer tag that keys it.

A stream's seed sequence (for ``np.random.default_rng`` or
:func:`ugclu_jax.data.batch_indices`) is its base followed by its tag:
``seed_for(base, "scope.stream") == (*base, STREAMS[scope][stream])``. The scope
says what the base is (who draws); within a scope the tags are distinct.

Streams of one role carry one tag in every method scope (``target_batches`` 1,
``remain_batches`` 2), and every method's base is the same
(:func:`ugclu_jax.methods.method_seed`): all methods and ablations draw the same
batches of a request, so that their results are paired. Only the oracle's twin
draws its own.

Standard library only.
"""

import numbers

# What the base of each scope is, and how many integers it holds.
BASES = {
  "run": ("(run seed,)", 1),
  "request": ("(run seed, request index)", 2),
  "ugclu": ("methods.method_seed(run seed, request, name): one for all but the twin", 3),
  "baseline": ("methods.method_seed(run seed, request, name): one for all but the twin", 3),
  "oracle": ("methods.method_seed(run seed, request, name): one for all but the twin", 3),
}

# scope -> stream -> tag.
STREAMS = {
  "run": {
    "train_subsample": 0x5EED,  # data.max_train_per_class: the training samples kept
    "test_pool": 0x7E57,  # the class-balanced test subsample of the whole run
    "validation": 0x7A11,  # data.validation_per_class: the held-out validation samples
    "tuning_test": 0x7E5A,  # data.test_on_validation: the held-out samples used as test set
    "twin_init": 0x7214,  # the initial weights of the oracle's twin (retrain_twin)
  },
  "request": {
    "eval_forget": 1,  # the evaluated forget samples of an unlearn request
    "eval_remain": 2,  # the evaluated remain samples after a request
    "random_unlearn": 11,  # the samples a random unlearn request U:r takes
    "store_reservoir": 12,  # which learned samples enter the replay store
  },
  "ugclu": {
    "target_batches": 1,  # target batches of the target (or fused) steps
    "remain_batches": 2,  # store batches of the remain (or fused) steps
    "fisher_target": 7,  # target batches of the saliency mask's Fisher diagonal
    "fisher_remain": 8,  # store batches of the saliency mask's Fisher diagonal
    "random_mask": 10,  # mask_kind="random": the positions of the random mask's ones
  },
  "baseline": {
    "target_batches": 1,  # batches of D_L (learn) or D_U (unlearn)
    "remain_batches": 2,  # store batches (replay, remain terms, SCRUB's min steps)
    "replay_batches": 3,  # DER++'s second store batch (its cross-entropy term)
    "random_labels": 5,  # RL's and SalUn's random labels of D_U
    "salun_mask": 6,  # the forget batches of SalUn's saliency
    "ewc_fisher": 9,  # the samples of EWC's Fisher estimate
  },
  "oracle": {
    "target_batches": 1,  # batches of D_R ∪ D_L when retraining
  },
}


def seed_for(base, role: str) -> tuple[int, ...]:
  """The seed sequence ``(*base, tag)`` of stream ``role``, named ``"scope.stream"``.

  Args:
    base: the scope's base (:data:`BASES`): an int or a sequence of ints.
    role: e.g. ``"request.eval_forget"`` or ``"ugclu.fisher_target"``.

  Raises:
    KeyError: an unknown role. ValueError: a base of the wrong length.
  """
  scope, _, stream = role.partition(".")
  if scope not in STREAMS or stream not in STREAMS[scope]:
    raise KeyError(
      f"unknown seed stream {role!r}; known: "
      f"{', '.join(f'{s}.{n}' for s in STREAMS for n in STREAMS[s])}"
    )
  base = (int(base),) if isinstance(base, numbers.Integral) else tuple(int(b) for b in base)
  what, length = BASES[scope]
  if len(base) != length:
    raise ValueError(f"seed stream {role!r} takes a base {what}, got {base}")
  return (*base, STREAMS[scope][stream])
