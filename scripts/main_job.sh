#!/usr/bin/env bash
# The README's main job: the whole Send-VAE chain at toy scale, on the built-in `shapes` data,
# with the real MobileNetV2 teacher of the sendvae-torchvision plugin, offline, on a CPU.
#
#   extract (teacher tokens, once) -> train-vae (aligned) -> cache-latents -> train-sit (REPA, same
#   teacher) -> sample (balanced, CFG)
#   -> fid (MobileNetV2 space, against held-out shapes) -> probe -> recon -> summary
#
# Each step is one plain command, printed before it runs; copy any of them to rerun it alone.
# Rerunning the script skips the steps that finished (every command also resumes by itself).
#
#   scripts/main_job.sh                 # into runs/main
#   SIT_STEPS=6000 scripts/main_job.sh  # then: the generator continues to 6,000 steps, and its
#                                       # samples, grid and FD are made again
#   OUT=runs/small VAE_STEPS=20 SIT_STEPS=20 NUM_SAMPLES=20 scripts/main_job.sh   # a quick check
#   ALIGN_WEIGHT=0.2 OUT=runs/align-0.2 scripts/main_job.sh   # another alignment weight (docs/reproduce.md)
#   DECODER_ONLY=0 VAE_STEPS=1200 OUT=runs/joint scripts/main_job.sh
#                       # without the decoder's own steps at the end: its hues then depend on how
#                       # the CPU rounds float32 (docs/reproduce.md)
set -euo pipefail
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # every weight this job reads is local: never wait on the hub

OUT=${OUT:-runs/main}
TEACHER=${TEACHER:-tv-mobilenet-v2}
# One recipe on every CPU: the tiny preset's VAE in fp32, so an AVX2 laptop and an AMX Xeon train
# the same model, up to float32's last bits: 1,400 steps of 8, the last 200 training the decoder
# alone on the fixed latent (without them the decoder still mixes neighbouring hues, by an amount
# that depends on the CPU's rounding), the alignment from half-way through the other 1,200.
# VAE_PRECISION=bf16 is faster where the CPU multiplies bf16 in hardware (AMX, avx512_bf16), and
# trains a slightly different VAE.
VAE_PRECISION=${VAE_PRECISION:-fp32}
VAE_STEPS=${VAE_STEPS:-1400}
DECODER_ONLY=${DECODER_ONLY:-$((VAE_STEPS / 7))}  # a number of steps, or a share below 1 (train-vae --decoder-only)
DECODER_STEPS=$(awk -v n="$VAE_STEPS" -v d="$DECODER_ONLY" 'BEGIN { print (d >= 1) ? int(d) : int(n * d + 1e-9) }')
ALIGN_START=${ALIGN_START:-$(((VAE_STEPS - DECODER_STEPS) / 2))}
ALIGN_WEIGHT=${ALIGN_WEIGHT:-}   # empty: the preset's 0.3
SIT_STEPS=${SIT_STEPS:-3000}
SIT_MODEL=${SIT_MODEL:-SiT-mini/4}  # /4: the 16x16 latent of the tiny preset's VAE -> 4x4 tokens, the teacher's grid
NUM_IMAGES=${NUM_IMAGES:-2000}    # training rows (the first N of shapes)
NUM_SAMPLES=${NUM_SAMPLES:-250}   # class-balanced samples for FD (50 per class)
REF_IMAGES=${REF_IMAGES:-500}     # held-out shapes rows FD compares with
PROBE_IMAGES=${PROBE_IMAGES:-2000}
RECON_IMAGES=${RECON_IMAGES:-128}
CFG=${CFG:-4}                     # the paper's 2.5 is for converged generators; one trained for minutes
                                  # shows its classes more clearly at 4 (docs/reproduce.md, the toy scale)
SAMPLE_STEPS=${SAMPLE_STEPS:-25}
SENDVAE=${SENDVAE:-sendvae}       # e.g. "python -m sendvae_cli" in a checkout without the script

mkdir -p "$OUT/.done"

# step NAME OUTPUT COMMAND...: print the command, run it unless it already finished with the
# same command line, and record its wall time in OUT/steps.tsv. A step that runs marks the steps
# that read its output as stale, and theirs in turn: their outputs came from its old output, so
# they are removed and made again even though their own command did not change. When train-sit
# continues to more steps (SIT_STEPS=6000 after a first run), say, the old model's samples, grid
# and FD are made again from the new model; the VAE, its latents, probe and recon stay.
used_by() {
    case $1 in
        extract) echo "train-vae train-sit" ;;
        train-vae) echo "cache-latents sample grid probe recon" ;;
        cache-latents) echo "train-sit" ;;
        train-sit) echo "sample grid" ;;
        sample | reference) echo "fid" ;;
    esac
}
mark_stale_after() {
    local s
    for s in $(used_by "$1"); do
        if [ -f "$OUT/.done/$s" ]; then mv "$OUT/.done/$s" "$OUT/.done/$s.stale"; fi
        mark_stale_after "$s"
    done
}
# What a step wrote: the folder (OUT/samples for OUT/samples/samples.npz), or the file and its
# .json companion when it writes straight into OUT.
remove_output() {
    local output=$1
    if [ "$(dirname "$output")" = "$OUT" ]; then rm -f "$output" "$output.json"; else rm -rf "$(dirname "$output")"; fi
}
step() {
    local name=$1 output=$2; shift 2
    local marker="$OUT/.done/$name"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ]; then
        echo "# $name: done before ($output)"
        return
    fi
    if [ -f "$marker.stale" ]; then
        echo "# $name: made from an earlier step's old output; removing it ($output) and running again"
        remove_output "$output"
    fi
    rm -f "$marker.stale"
    mark_stale_after "$name"
    echo
    echo "\$ $*"
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\n' "$name" "$output" "$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")" >> "$OUT/steps.tsv"
    echo "$*" > "$marker"
}

# 1. The teacher's patch tokens of the training images, computed once: both trainings read them
#    (the images are not augmented, so the tokens are what the teacher would give at every step).
step extract "$OUT/teacher.h5" \
    $SENDVAE extract shapes --teacher "$TEACHER" --resolution 64 --num-images "$NUM_IMAGES" --out "$OUT/teacher.h5"

# 2. A Send-VAE: the VAE's latent aligned to MobileNetV2's feature map through the mapper, with
#    noise injection (the tiny preset: 64 px; LPIPS off, its VGG16 weights would need a download).
#    --workers 0 here and in train-sit: the rows are drawn in memory, and on 2 cores loader
#    processes only take time from the step (5-7% of it).
step train-vae "$OUT/vae/export" \
    $SENDVAE train-vae shapes --preset tiny --teacher "$TEACHER" --teacher-features "$OUT/teacher.h5" \
    --lpips-weight 0 --num-images "$NUM_IMAGES" --steps "$VAE_STEPS" --align-start "$ALIGN_START" ${ALIGN_WEIGHT:+--align-weight "$ALIGN_WEIGHT"} \
    --decoder-only "$DECODER_ONLY" \
    --precision "$VAE_PRECISION" --workers 0 --out "$OUT/vae"

# 3. Its latents (posterior mean and std) of the training images, with whole-set statistics.
step cache-latents "$OUT/latents.h5" \
    $SENDVAE cache-latents shapes --vae "$OUT/vae/export" --resolution 64 --num-images "$NUM_IMAGES" --out "$OUT/latents.h5"

# 4. A class-conditional SiT on those latents, REPA-aligned to the same teacher's tokens (a
#    checkpoint and a preview grid every 500 steps: every 100, as the preset, costs ~10 s here).
step train-sit "$OUT/sit/export" \
    $SENDVAE train-sit "$OUT/latents.h5" --preset tiny --model "$SIT_MODEL" --teacher "$TEACHER" \
    --teacher-features "$OUT/teacher.h5" --steps "$SIT_STEPS" --checkpoint-every 500 --sample-every 500 --workers 0 \
    --out "$OUT/sit"

# 5. Class-balanced samples with classifier-free guidance, and a grid with one row per class.
step sample "$OUT/samples/samples.npz" \
    $SENDVAE sample "$OUT/sit" -n "$NUM_SAMPLES" --labels balanced --cfg "$CFG" --steps "$SAMPLE_STEPS" --out "$OUT/samples"
step grid "$OUT/grid/grid.png" \
    $SENDVAE sample "$OUT/sit" --grid 5x8 --cfg "$CFG" --steps "$SAMPLE_STEPS" --out "$OUT/grid"

# 6. Frechet distance in MobileNetV2's feature space (Inception weights are not available
#    offline) between the samples and held-out shapes images.
step reference "$OUT/shapes-ref.npz" \
    python scripts/main_job_report.py reference --out "$OUT/shapes-ref.npz" --num-images "$REF_IMAGES"
step fid "$OUT/fid.json" \
    $SENDVAE fid "$OUT/samples/samples.npz" --ref "$OUT/shapes-ref.npz" --extractor "$TEACHER" --json "$OUT/fid.json"

# 7. Attribute linear probes (shape, colour, size, position, background, texture) on the latent.
step probe "$OUT/probe/probe.json" \
    $SENDVAE probe shapes --vae send-vae="$OUT/vae/export" --num-images "$PROBE_IMAGES" --out "$OUT/probe"

# 8. Reconstruction quality on held-out images (PSNR, SSIM, rFD in MobileNetV2 space): --seed 1000
#    draws shapes images that training (seed 0) never saw.
step recon "$OUT/recon/recon.json" \
    $SENDVAE recon shapes --vae send-vae="$OUT/vae/export" --num-images "$RECON_IMAGES" --seed 1000 \
    --extractor "$TEACHER" --no-lpips --out "$OUT/recon"

# 9. The summary: each step's output and time, FD, probe F1, PSNR; and one picture.
echo
echo "\$ python scripts/main_job_report.py summary --out $OUT"
python scripts/main_job_report.py summary --out "$OUT"
