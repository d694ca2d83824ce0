#!/usr/bin/env bash
# The GPU training runs of the README ("Training on a GPU"), in one call of a GPU machine.
#
#   benchmarks/gpu_training.sh DATA OUT SECONDS
#
# DATA holds bsd/train, bsd/Set68 and bsd/Set12 (docs/data.md); SECONDS is each run's
# --max-time.  It checks the CUDA path (tests/test_cuda.py), then trains four models side by
# side on the one GPU, from the learned CPU models in results/denoisers/:
#   - the two CPU recipes of the session unchanged (batches of 20), for the CPU/GPU
#     comparison: wcrr_rho09 (weakly convex ridge, rho 0.9, from wcrr_foe_long, 800 crops)
#     and foe24x5c5_rms_cont (field of experts from foe24x5c5_rms_more, 2000 crops);
#   - the same with batches of 100 (and 4000 crops for the ridge): what the GPU affords;
# then evaluates each on BSD68 at sigma 25 on the GPU (68 images, --tol 1e-2) and packs the
# run folders (results/denoisers/NAME, without checkpoints), the evaluations
# (results/bsd68_learned/NAME) and the logs into OUT/runs.tgz.
# The machine's torch is used as it is; the repository runs from its checkout.
set -u
DATA=$1 OUT=$2 SECONDS_EACH=$3
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
site=$(mktemp -d) && ln -s "$PWD/problems" "$site/bilevel_problems"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
RUNS_DIR=results/denoisers EVAL_DIR=results/bsd68_learned LOGS=$(mktemp -d)/gpu_logs
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

# The final check runs in the trainings only if the CUDA tests pass (a failure there would
# lose the run's folder); without it theta.json is the returned iterate, unchecked.
if timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py; then
    CHECK=loss
else
    CHECK=False
fi
echo "final check: $CHECK"

common=(--sigma 25 --filters 24 --filter-size 5 --border 4 --method maid_sgd --alpha0 0.01
        --set average=0.99 --set precondition=rmsprop --set "final_check=$CHECK"
        --max-iter 1000000 --max-time "$SECONDS_EACH" --checkpoint-every 100
        --device cuda --data "$DATA/bsd/train")
wcrr=(--model wcrr --knots 201 --x-range 0.6 --rho 0.9
      --init results/denoisers/wcrr_foe_long_sigma25)
foe=(--model foe --patches 2000 --crops-per-image 5
     --init results/denoisers/foe24x5c5_rms_more_sigma25)
declare -A RUNS=(
    [wcrr_rho09_gpu_sigma25]="${wcrr[*]} --patches 800 --crops-per-image 2 --batch-size 20"
    [wcrr_rho09_gpu_b100_sigma25]="${wcrr[*]} --patches 4000 --crops-per-image 10 --batch-size 100"
    [foe24x5_rms_gpu_sigma25]="${foe[*]} --batch-size 20"
    [foe24x5_rms_gpu_b100_sigma25]="${foe[*]} --batch-size 100"
)
limit=$((SECONDS_EACH + 150))  # the final check's time; SIGTERM still writes the folder
for name in "${!RUNS[@]}"; do
    # shellcheck disable=SC2086  # the recipes are word lists
    timeout -s TERM "$limit" python3 scripts/train_denoiser.py ${RUNS[$name]} "${common[@]}" \
        --out "$RUNS_DIR/$name" > "$LOGS/$name.log" 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
    echo "== $name"; tail -c 1500 "$LOGS/$name.log" | tr '\r' '\n' | tail -n 4
    rm -f "$RUNS_DIR/$name/checkpoint.pt"
done
pack() {
    # -C applies to the names after it: the logs from their folder, the runs from the checkout.
    tar -czf "$OUT/runs.tgz" -C "$(dirname "$LOGS")" gpu_logs -C "$PWD" \
        $(for name in "${!RUNS[@]}"; do ls -d "$RUNS_DIR/$name" "$EVAL_DIR/$name" 2>/dev/null; done)
}
pack

for name in "${!RUNS[@]}"; do
    [ -f "$RUNS_DIR/$name/theta.json" ] || continue
    timeout 200 python3 benchmarks/bsd68.py --set Set68 --sigma 25 --no-bm3d --tol 1e-2 \
        --tv-weights 0.0733603234563737 --device cuda --data "$DATA/bsd" \
        --model "$name=$RUNS_DIR/$name" --out "$EVAL_DIR/$name" \
        > "$LOGS/eval_$name.log" 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
    echo "== eval $name"; tail -n 3 "$LOGS/eval_$name.log"
done
pack
