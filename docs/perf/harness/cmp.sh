#!/bin/bash
# usage: OLD=dir NEW=dir cmp.sh batch samples threads rounds  -> interleaved old/new median epoch s/60k
# (two checkouts with mnist_timing built in release; MNIST from $MNIST_DIR)
B=$1; S=$2; T=$3; R=${4:-3}
for r in $(seq $R); do
  for v in v0 main; do
    if [ $v = v0 ]; then exe=${OLD:-/tmp/v0}/target/release/examples/mnist_timing; else exe=${NEW:-.}/target/release/examples/mnist_timing; fi
    $exe --batch $B --samples $S --threads $T --epochs 3 --eval off --data ${MNIST_DIR:-data/mnist} --json /tmp/r.json >/dev/null 2>&1
    python3 -c "import json;r=json.load(open('/tmp/r.json'));print('$v b$B t$T', round(r['median_epoch_seconds_per_60000'],3))"
  done
done
