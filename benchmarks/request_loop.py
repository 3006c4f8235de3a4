"""A request's loop on the host against the same loop on the device, side by side.

Times one ``fast_slow`` unlearn request (a target step every 5 iterations, batch
128, random 28x28 data, a random 50 % mask) played by ``ugclu_jax.run_request``
(a Python loop over jitted steps, batches gathered with NumPy) and by
``ugclu_jax.run_request_on_device`` (one ``lax.scan`` over the request, batches
gathered on the device), interleaved, after one warm-up call of each::

  python benchmarks/request_loop.py --model cnn --iterations 40
  python benchmarks/request_loop.py --model mlp --iterations 300

With ``--seeds 4,8`` it times seeds in one program instead: the same request for
``S`` seeds (own initial weights, batches and masks) through
``ugclu_jax.run_seeds_on_device``, against one seed through
``run_request_on_device``, and prints time(S) / time(1)::

  python benchmarks/request_loop.py --model mlp --iterations 300 --seeds 4,8
"""

import argparse
import time

import jax
import numpy as np
from flax import nnx

import ugclu_jax as ug
from ugclu_jax.host import keep_freed_host_memory
from ugclu_jax.models import as_functional, get_model


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="cnn", choices=("mlp", "cnn"))
  p.add_argument("--iterations", type=int, default=40)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument(
    "--seeds", default="", help="comma-separated seed counts S to time against one seed"
  )
  args = p.parse_args(argv)
  seed_counts = [int(v) for v in args.seeds.split(",") if v]
  n, f, b = args.iterations, 5, args.batch
  apply_fn, params, ms = as_functional(
    get_model(args.model, num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
  )
  tx = ug.build_optimizer(learning_rate=0.01)
  rng = np.random.default_rng(0)

  def data(m):
    x = rng.standard_normal((m, 28, 28, 1)).astype(np.float32)
    return ug.Batch(x, rng.integers(0, 10, m).astype(np.int32), np.ones(m, np.float32))

  target, remain = data(1000), data(6000)
  t_index = rng.integers(0, 1000, (-(-n // f), b)).astype(np.int32)
  r_index = rng.integers(0, 6000, (n, b)).astype(np.int32)
  mask = jax.tree.map(lambda q: (rng.random(q.shape) < 0.5).astype(np.float32), params)
  hp = ug.RequestHParams.create(learning_rate=0.01, a_target=2.0, num_iterations=n, beta=0.1)
  steps = ug.make_steps(apply_fn, tx, kind="unlearn", mode="fast_slow")
  on_device = (ug.Batch(*jax.device_put(tuple(target))), ug.Batch(*jax.device_put(tuple(remain))))
  common = dict(mode="fast_slow", num_iterations=n, forget_freq=f, mask=mask, hp=hp)

  def take(batch, rows):
    return ug.Batch(*(np.asarray(a)[rows] for a in batch))

  def host_loop():
    return ug.run_request(
      steps,
      ug.init_train_state(params, ms, tx),
      target_batch=lambda j: take(target, t_index[j]),
      remain_batch=lambda k: take(remain, r_index[k]),
      **common,
    )[0]

  def device_loop():
    return ug.run_request_on_device(
      steps,
      ug.init_train_state(params, ms, tx),
      target_data=on_device[0],
      target_index=t_index,
      remain_data=on_device[1],
      remain_index=r_index,
      chunk=n,
      **common,
    )[0]

  def seeds_loop(num_seeds):
    keys = range(1, num_seeds + 1)  # Seed 0's draws are the ones above.
    inits = [
      as_functional(
        get_model(args.model, num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(k))
      )[1:]
      for k in keys
    ]
    draws = [np.random.default_rng(k) for k in keys]
    stack = lambda trees: jax.tree.map(lambda *a: np.stack(a), *trees)  # noqa: E731
    t_idx = np.stack([r.integers(0, 1000, t_index.shape) for r in draws]).astype(np.int32)
    r_idx = np.stack([r.integers(0, 6000, r_index.shape) for r in draws]).astype(np.int32)
    masks = stack(
      [
        jax.tree.map(lambda q, r=r: (r.random(q.shape) < 0.5).astype(np.float32), mask)
        for r in draws
      ]
    )
    seed_common = {k: v for k, v in common.items() if k != "mask"}

    def run():
      return ug.run_seeds_on_device(
        steps,
        stack([ug.init_train_state(p, s, tx) for p, s in inits]),
        target_data=on_device[0],
        target_index=t_idx,
        remain_data=on_device[1],
        remain_index=r_idx,
        masks=masks,
        chunk=n,
        **seed_common,
      )[0]

    return run

  if seed_counts:
    loops = {"run_request_on_device": device_loop}
    loops.update({f"run_seeds_on_device S={k}": seeds_loop(k) for k in seed_counts})
  else:
    loops = {"run_request": host_loop, "run_request_on_device": device_loop}
  for fn in loops.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in loops}
  for _ in range(args.repeats):
    for name, fn in loops.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append((time.perf_counter() - start) / n)
  out = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
  head = f"{args.model}, fast_slow, N={n}, batch {b}, median of {args.repeats}: "
  line = ", ".join(f"{name} {ms_:.1f} ms/iteration" for name, ms_ in out.items())
  one = out["run_request_on_device"]
  if seed_counts:
    ratios = {k: out[f"run_seeds_on_device S={k}"] / one for k in seed_counts}
    out.update({f"time({k})/time(1)": r for k, r in ratios.items()})
    line += "; " + ", ".join(f"time({k})/time(1) {r:.2f}" for k, r in ratios.items())
  else:
    line += f"; on device / host {one / out['run_request']:.2f}"
  print(head + line)
  return out


if __name__ == "__main__":
  keep_freed_host_memory()
  main()
