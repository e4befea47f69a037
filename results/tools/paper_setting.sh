#!/usr/bin/env bash
# Issue 28 points 4-5: the ablation in the paper's setting (a text tower whose top 4 layers learn,
# every arm refining one trained plain CLIP), under both evaluation protocols, with the embedding
# geometry traced; then the from-scratch geometry runs (frozen vs trainable text). Resumable: a
# finished run is found finished (compare re-evaluates it), an unfinished one resumes exactly.
#
#   results/tools/paper_setting.sh BENCH
#
# BASE_CONFIG=demo-text4-192 TAG=-192 SEEDS=0 STEPS=12 ARMS=offclip/filtered results/tools/paper_setting.sh BENCH:
# the control and OFF-CLIP from a 192-px starting CLIP (the pointing game's 6x6 grid; BENCH/base-text4-192,
# BENCH/refine-text4-192), steps 1-2 only (ARMS: compare --arms; the control always runs).
#
# BENCH/w4k: `offclip demo-world BENCH/w4k --studies 3955 --seed 0 --eval-images 1000`
# BENCH/c4k: `offclip build-shards BENCH/w4k BENCH/c4k --folders all --image-size 192 --classifier CLASSIFIER`
set -euo pipefail
BENCH=${1:?BENCH directory}
PY=${PY:-.venv/bin/python}
OFFCLIP=${OFFCLIP:-.venv/bin/offclip}
SEEDS=${SEEDS:-0,1,2,3,4}
EVAL=$BENCH/w4k/eval/vindr-cxr
BASE_CONFIG=${BASE_CONFIG:-demo-text4}
TAG=${TAG:-}
STEPS=${STEPS:-1234}
BASE=$BENCH/base-text4$TAG

# 1. the plain CLIP every arm refines: InfoNCE on whole reports, demo-text4, 12 epochs, seed 100
#    (a seed no arm uses)
$PY -m offclip.models.train --shards "$BENCH/c4k" --run-dir "$BASE" --config $BASE_CONFIG \
    --loss infonce --text-source report --seed 100 --trace-every 100

# 1b. where every refinement starts: the baseline evaluated under both protocols
for protocol in offclip paper; do
  [ -f "$BASE/eval-$protocol/vindr-cxr.json" ] || $PY -c "
import sys; from pathlib import Path; from offclip.models.evaluate import evaluate
r = evaluate(Path(sys.argv[1]), 'vindr-cxr', Path(sys.argv[2]), out=Path(sys.argv[3]), protocol=sys.argv[4])
print(sys.argv[4], {k: r.summary[k] for k in ('normal_auc', 'macro_auc')})" \
      "$BASE/model" "$EVAL" "$BASE/eval-$protocol" $protocol
done

# 2. the four arms refining it (demo-text4-refine: 6 epochs), seeds 0-4 (a refinement with both
#    evaluations takes ~5 min on 2 quiet cores: ~1 h 40 min for the 20), both protocols, geometry once an epoch
$OFFCLIP compare "$BENCH/c4k" "$EVAL" --init "$BASE/model" --config demo-text4-refine \
    --seeds "$SEEDS" --arms "${ARMS:-all}" --protocol both --trace-every 105 --out "$BENCH/refine-text4$TAG"
[[ $STEPS == *3* || $STEPS == *4* ]] || { echo "paper_setting: done (steps $STEPS)"; exit 0; }

# 3. from scratch, seed 0, the geometry traced (no evaluation: the trace is what is asked of these):
#    the two filtered arms, loss off and on, with frozen text (demo) and trainable top 4 (demo-text4)
for config in ${SCRATCH_CONFIGS:-demo demo-text4}; do  # the figures in docs/ablation.md: SCRATCH_CONFIGS=demo
  for loss in infonce offclip; do
    $PY -m offclip.models.train --shards "$BENCH/c4k" --run-dir "$BENCH/scratch-$config/$loss-filtered-seed0" \
        --config $config --loss $loss --text-source filtered --seed 0 --trace-every 105
  done
done
# 4. the off-diagonal term alone (abnormal_weight 0: no abnormal-only InfoNCE beside it), refined as the
#    arms, filtered text, seed 0, traced: which of OFF-CLIP's two terms moves the normal images
$PY -m offclip.models.train --shards "$BENCH/c4k" --run-dir "$BENCH/refine-offdiag-only/offclip-filtered-aw0-seed0" \
    --config demo-text4-refine --init "$BENCH/base-text4/model" --loss offclip --abnormal-weight 0 \
    --text-source filtered --seed 0 --trace-every 105
echo "paper_setting: done"
