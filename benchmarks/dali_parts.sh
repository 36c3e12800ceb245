# Functions to carry a folder of wheels larger than one device call's 64 MiB in parts, and to put it back
# together on the device. Sourced by fetch_gpu_wheels.sh (here) and gpu_check_dali.sh (on the device);
# tests/test_gpu_check.py runs both halves on the CPU. Part names never start with a dot, so `mv dir/*` and
# globs see them.

# dali_split SRC_DIR DEST_PREFIX MB: tar SRC_DIR, cut it into MB-sized parts, one per folder DEST_PREFIX-N.
dali_split() {
  local src=$1 prefix=$2 mb=$3 n=0 part base=dali-wheels.tar
  tar -cf "$base" -C "$src" .
  split -b "${mb}M" -d -a 2 "$base" "$base.part-"
  rm -f "$base"
  sha256sum "$base".part-* > SHA256SUMS
  for part in "$base".part-*; do
    n=$((n + 1))
    mkdir -p "$prefix-$n"
    mv "$part" "$prefix-$n/"
  done
  mv SHA256SUMS "$prefix-1/"
}

# dali_stash PART_DIR STASH: move one carried part into the stash that outlives the call (same machine).
dali_stash() {
  mkdir -p "$2"
  mv "$1"/* "$2"/
}

# dali_join STASH DEST_DIR: check every part against SHA256SUMS, join them, unpack the wheels into DEST_DIR.
dali_join() {
  local stash=$1 dest=$2
  (cd "$stash" && sha256sum --quiet -c SHA256SUMS) || { echo "dali_join: parts missing or damaged" >&2; return 1; }
  mkdir -p "$dest"
  cat "$stash"/*.part-* | tar -xf - -C "$dest"
}
