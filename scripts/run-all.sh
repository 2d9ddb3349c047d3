#!/usr/bin/env bash
# Every CPU experiment behind docs/results.md, one after another. Each is resumable: rerun this script and
# finished runs are skipped. Run from anywhere; about 6.5 h on a 2-core CPU in all.
set -euo pipefail
cd "$(dirname "$0")/.."
grads=.venv/bin/grads
$grads experiment results/medmcqa-smollm2/config.yaml --out results/medmcqa-smollm2
for variant in density-tails length-residual no-warmup no-warmup-ratios steps38; do
    $grads experiment "results/variant-$variant/config.yaml" --out "results/variant-$variant"
done
# the chosen default (no warm-up) on the test tasks, after the choice (docs/results.md)
$grads experiment results/confirm-no-warmup/config.yaml --out results/confirm-no-warmup
# grads-auto (a budget the data chooses) at the default scoring, on the test tasks
$grads experiment results/auto-budget/config.yaml --out results/auto-budget
# the comparison tables quoted in docs/results.md (stdout)
$grads compare --validation results/medmcqa-smollm2 results/variant-*
$grads compare results/confirm-no-warmup --against results/medmcqa-smollm2 --tag "no warm-up"
$grads compare results/auto-budget --against results/medmcqa-smollm2 --tag "no warm-up"
.venv/bin/python scripts/subset_profile.py
# the claims grid (issue 15) with issue 26's controls; its shared scoring stages come back from the committed merged
# tables first, so the controls are matched to the subsets the committed runs trained on
for selection in results/claim-medmcqa/select results/claim-medmcqa/select-theta0; do
    [ -e "$selection/score/score.json" ] || .venv/bin/python scripts/restore_scores.py "$selection"
done
$grads experiment results/claim-medmcqa/config.yaml --out results/claim-medmcqa
.venv/bin/python scripts/claims.py results/claim-medmcqa
