#!/usr/bin/env bash
# Everything the GPU issues ask to be shown, in one batched run (device time is scarce).
# Run from the repo root on a CUDA machine with samsparse importable (PYTHONPATH=$PWD):
#   OUT=out bash scripts/gpu_session.sh [stage ...]
# Stages (default: all, in this order; each has its own time limit and log under $OUT):
#   tests      GPU test grids of the Triton and CUDA backends
#   attention  scripts/bench_attention.py (all SDPA backends, Flex, SAM eager; sequence + tiles masks)
#   encoder8   vit_b B=8 encoder: original, sdpa, dense, 25% hierarchical (8x16 and 1x64 tiles), eager and compiled
#   encoder50  vit_b B=8 compiled: dense and the 50% hierarchical recipe (8x16 and 1x64 tiles; long rows: the pass)
#   encoder1   vit_b B=1 encoder with CUDA graphs
#   vith       vit_h B=8 eager and compiled, B=1 eager and CUDA graphs
#   ratio      vit_b B=8 compiled: dense vs 25% hierarchical (8x16 and 1x64 tiles), dense with SAM's
#              window partition, and the original eager encoder, interleaved rounds
#   profile    GPU time per kernel group of the compiled vit_b B=8 encoder, dense and 25%
#   cold       fully cold optimize(compile="default") first call (fresh caches), with the shipped tuning
#   fixedab    scripts/ab_fixed_offset.py --sparse: the global kernel's fixed-offset pass vs its running max
#   variants   the same (--quick --sparse) for the shipped kernels and with SAMSPARSE_TRITON_CARRY_IDS=0
#   attnseq    bench_attention.py on the sequence layout only (no Flex, no SAM eager, no windows)
#   attnseq_dense  the same with the fixed-offset pass kept to dense calls (SAMSPARSE_TRITON_FIXED_OFFSET=dense)
#   terms      scripts/bench_terms.py: tile configs of the rel-pos terms kernel on SAM's global shapes
#   hostprof   scripts/profile_host.py: host time per call of each piece, and a cProfile of vit_b B=1's call
#   stepcost   scripts/bench_step_cost.py: fixed and per-key-row cost of masked global calls (vit_b, vit_h)
#   stepcost_pass  stepcost's vit_b rows with the fixed-offset pass in every masked call (=all)
#   attnseq_oldpass  attnseq with the eleventh session's pass threshold for masks (1792 keys)
#   stepcost_pass_h  stepcost_pass for vit_h (tables only)
#   vith8_1x64  vit_h B=8 encoder: dense and the 1x64-tile recipes (25%, 50%) compiled
#   passtests  the GPU tests that run the fixed-offset pass: native checks, the case grid, every candidate config
#   regcap     SAMSPARSE_TRITON_REGCAP=168 (64-row key-row tiles capped at 3 CTAs/SM's registers, now the
#              default) against =0:
#              vit_h masked running-max calls (bench_step_cost.py, 4 alternating runs); the terms kernel capped at
#              64 / 72 registers against none (bench_terms.py, alternating rounds); the window configs with
#              SAMSPARSE_TRITON_WINDOW_REGCAP=128 against none (sweep_window_configs.py, 3 alternating runs)
#   regcap_tests  the GPU case grid and the window tests with the terms and window caps on (a window kernel
#              ptxas cannot compile under 128 registers, d=256, falls back to no cap)
#   capab      vit_h masked calls (bench_step_cost.py, tables): the running max (capped at 168 registers, the
#              default) against the fixed-offset pass, 2 alternating runs each
#   vith8_nocap  vith8_1x64 with SAMSPARSE_TRITON_REGCAP=0 (the twelfth session's kernels and pass rule)
#   attnseq_nocap  attnseq with SAMSPARSE_TRITON_REGCAP=0
#   maxnreg    sweep_maxnreg.py: global kernels at forced configs under register caps, vit_b and vit_h
#   ncusparse  Nsight Compute of the dense and two sparse global kernels, with per-instruction source counters
#   scaling    bench_batch_scaling.py: B=1 against B=8 per FLOP through a patched block, interleaved rounds
#   recheck    the Triton GPU tests of what the tenth session changed without a GPU run (key-step count
#              unspecialized; one-step dense calls, masked small grids, every window candidate and
#              fallback, the in-place windows encoder, autotune, varlen, compile, native checks)
#   natively   the GPU runs of the interpreter checks (fixed-offset pass and its redo launch among them)
#   pscale     #5's p-scaling with dense and sparse calls in alternating rounds (bench_step_cost.py --interleaved)
#   ratio5     the ratio stage's dense and 25% rows only, 5 rounds
#   cudatests  the CUDA backend's GPU tests
#   quicktests the GPU runs of the interpreter checks and every candidate tile config
#   tune       record the autotuner's choices for SAM's shape classes (shipped tuning ignored, fresh
#              cache; vit_b and vit_h at B=8 and B=1) into $OUT/autotune_recorded.json, to be merged
#              into samsparse/backends/triton/tuned/ for this GPU
#   cuda       scripts/check_cuda_gpu.sh build + bench
#   attncuda   bench_attention.py with the CUDA backend's rows (mma.sync, wgmma), B=8, sequence masks (#6's table)
#   wgmma      the Hopper CUDA kernel (the CUDA backend's default on compute capability 9.0): its GPU tests
#              (every tile shape, varlen), then check_cuda_gpu.sh build + bench (wgmma rows per tile next to
#              mma.sync, cuDNN and tuned Triton) + memcheck90 (compute-sanitizer); ~2 min, the check of a kernel edit
#   ncu        Nsight Compute sections of one call of each kernel (scripts/profile_kernels.py)
#   probe      scripts/probe_cxx_strings.py: which ways of building a message survive in a C++ extension here
#   persisttoy scripts/ab_persistent_toy.py: does a persistent (flattened) program loop cut the fixed cost per
#              program of masked attention? (toy, vit_b B=8 global shape, 64-row tiles, k = 4..64 key blocks;
#              measured on the H200 in the nineteenth session: no, see Triton NOTES)
#   prologuetoy the same toy, one program per tile, with the shipped masked kernel's per-tile extras added one
#              at a time (width tile, height term, id row, LSE): where the masked intercept comes from
#   attnkeep   attnseq with the autotune cache kept in $SAMSPARSE_HOME (set it to a fresh folder: the first
#              call still tunes from the shipped tuning only, and the choices stay for recordtune / shiptune)
#   recordtune copy $SAMSPARSE_HOME/triton/autotune.json to $OUT/autotune_recorded.json (merge it into the repo
#              with scripts/ship_tuning.py)
#   shiptune   merge $SAMSPARSE_HOME/triton/autotune.json into this copy's shipped tuning, so that a later `cold`
#              stage measures a first call with this GPU's tuning shipped
#   freshtune  the ratio stage with the shipped tuning ignored (SAMSPARSE_TRITON_SHIPPED=0), so that every class
#              the encoders use (the hierarchical masks' too) is tuned on this GPU first; then recordtune. Run it
#              with SAMSPARSE_HOME set to a fresh folder; stages after it in the same call reuse that tuning
#   Every bar on a GPU not measured since the kernels changed (an H100, say), in four calls of < 10 min on
#   one warm machine, SAMSPARSE_HOME=/tmp/sh in each: `attnkeep recordtune cuda` (#5, #6), `shiptune ratio`
#   (#7: dense vs 25% and vs the original eager encoder), `cold encoder1` (first call, B=1), `vith`.
#   The warm machine goes back 30 s after a call: issue the next call at once, or batch stages into one call.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OUT="${OUT:-gpu_session_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TUNE_CACHE="${SAMSPARSE_HOME:-$HOME/.cache/samsparse}/triton/autotune.json"  # the autotuner's cache (configs.py)
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests attention encoder8 encoder1 vith cold profile cuda ncu)

record_tune() {  # record_tune STAGE: the autotuner's cache to $OUT/autotune_recorded.json
  cp "$TUNE_CACHE" "$OUT/autotune_recorded.json" \
      && echo "== $1: $OUT/autotune_recorded.json" || echo "== $1: no autotune cache"
}

run() {  # run NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s (log $OUT/$name.log)"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    tests) run tests 420 "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py tests/test_cuda_backend.py -k "not wgmma" ;;
    attention) run attention 420 "$PY" scripts/bench_attention.py --layouts sequence,tiles \
        --json "$OUT/attention.json" --md "$OUT/attention.md" ;;
    encoder8) run encoder8 420 "$PY" scripts/bench_encoder.py --models vit_b --batch 8 --dtype bf16 --no-fp32 \
        --repeat 10 --recipes hierarchical:density=0.25 --compile \
        --extra-variants "sparse:hierarchical:density=0.25+compile" "sparse:hierarchical:density=0.25,tile=1x64+compile" \
        --json "$OUT/encoder8.json" --md "$OUT/encoder8.md" ;;
    encoder50) run encoder50 300 "$PY" scripts/bench_encoder.py --models vit_b --batch 8 --dtype bf16 --no-fp32 \
        --repeat 10 --recipes --extra-variants dense+compile "sparse:hierarchical:density=0.5+compile" \
        "sparse:hierarchical:density=0.5,tile=1x64+compile" --json "$OUT/encoder50.json" --md "$OUT/encoder50.md" ;;
    encoder1) run encoder1 300 "$PY" scripts/bench_encoder.py --models vit_b --batch 1 --dtype bf16 --no-fp32 \
        --repeat 20 --recipes --extra-variants "dense+graphs" "original+graphs" \
        --json "$OUT/encoder1.json" --md "$OUT/encoder1.md" ;;
    vith)
      run vith8 300 "$PY" scripts/bench_encoder.py --models vit_h --batch 8 --dtype bf16 --no-fp32 --repeat 5 \
          --recipes hierarchical:density=0.25 --extra-variants dense+compile "sparse:hierarchical:density=0.25+compile" \
          --json "$OUT/vith8.json" --md "$OUT/vith8.md"
      run vith1 200 "$PY" scripts/bench_encoder.py --models vit_h --batch 1 --dtype bf16 --no-fp32 --repeat 10 \
          --recipes --extra-variants dense+graphs --json "$OUT/vith1.json" --md "$OUT/vith1.md" ;;
    ratio) run ratio 480 "$PY" scripts/bench_sparse_ratio.py --model vit_b --batch 8 --rounds 7 --repeat 10 \
        --variants dense+compile "sparse:hierarchical:density=0.25+compile" \
        "sparse:hierarchical:density=0.25,tile=1x64+compile" dense+partition+compile original \
        --json "$OUT/ratio.json" --md "$OUT/ratio.md" ;;
    profile)
      run profile_dense 150 "$PY" scripts/profile_encoder.py --batch 8 --json "$OUT/profile_dense.json"
      run profile_sparse 150 "$PY" scripts/profile_encoder.py --batch 8 --recipe hierarchical:density=0.25 \
          --json "$OUT/profile_sparse.json" ;;
    cold)
      cold=$(mktemp -d)
      run cold 240 env SAMSPARSE_HOME="$cold/home" TORCHINDUCTOR_CACHE_DIR="$cold/inductor" \
          TRITON_CACHE_DIR="$cold/triton" "$PY" scripts/first_call_encoder.py --model vit_b --batch 8 \
          --json "$OUT/cold_first_call.json" ;;
    fixedab) run fixedab 300 "$PY" scripts/ab_fixed_offset.py --sparse --json "$OUT/fixed_offset_ab.json" ;;
    variants)
      # same call: shipped kernels, then the key-block ids of masked running-max loops looked up twice per
      # step (fixed=1 rows: the pass; fixed=0 rows of the sparse shapes: the masked running-max loop)
      run variants_base 150 "$PY" scripts/ab_fixed_offset.py --quick --sparse --json "$OUT/ab_shipped.json"
      run variants_nocarry 150 env SAMSPARSE_TRITON_CARRY_IDS=0 "$PY" scripts/ab_fixed_offset.py --quick --sparse \
          --json "$OUT/ab_no_carry_ids.json" ;;
    attnseq) run attnseq 420 "$PY" scripts/bench_attention.py --layouts sequence --skip-flex --skip-eager --no-window \
        --json "$OUT/attention_seq.json" --md "$OUT/attention_seq.md" ;;
    attnkeep) run attnkeep 420 "$PY" scripts/bench_attention.py --layouts sequence --skip-flex --skip-eager \
        --no-window --keep-cache --json "$OUT/attention_seq.json" --md "$OUT/attention_seq.md" ;;
    freshtune)
      run freshtune 540 env SAMSPARSE_TRITON_SHIPPED=0 "$PY" scripts/bench_sparse_ratio.py --model vit_b --batch 8 \
          --rounds 7 --repeat 10 --variants dense+compile "sparse:hierarchical:density=0.25+compile" \
          "sparse:hierarchical:density=0.25,tile=1x64+compile" original \
          --json "$OUT/ratio_freshtune.json" --md "$OUT/ratio_freshtune.md"
      record_tune freshtune ;;
    recordtune) record_tune recordtune ;;
    shiptune) run shiptune 60 "$PY" scripts/ship_tuning.py "$TUNE_CACHE" ;;
    attnseq_dense) run attnseq_dense 420 env SAMSPARSE_TRITON_FIXED_OFFSET=dense "$PY" scripts/bench_attention.py \
        --layouts sequence --skip-flex --skip-eager --no-window \
        --json "$OUT/attention_seq_passdense.json" --md "$OUT/attention_seq_passdense.md" ;;
    terms) run terms 300 "$PY" scripts/bench_terms.py --json "$OUT/terms_configs.json" ;;
    hostprof) run hostprof 200 "$PY" scripts/profile_host.py --cprofile 300 ;;
    scaling) run scaling 300 "$PY" scripts/bench_batch_scaling.py --rounds 7 --json "$OUT/batch_scaling.json" \
        --md "$OUT/batch_scaling.md" ;;
    recheck) run recheck 400 "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py -rf -k \
        "one_key_step or shorter_than_their_tile or every_window or fallback or encoder_with_windows or autotune or varlen or compile or natively" ;;
    natively) run natively 200 "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py -rf -k natively ;;
    pscale) run pscale_b 150 "$PY" scripts/bench_step_cost.py --model vit_b --interleaved 5 --json "$OUT/pscale_vit_b.json"
      run pscale_h 150 "$PY" scripts/bench_step_cost.py --model vit_h --interleaved 5 --json "$OUT/pscale_vit_h.json" ;;
    ratio5) run ratio5 420 "$PY" scripts/bench_sparse_ratio.py --model vit_b --batch 8 --rounds 5 --repeat 10 \
        --variants dense+compile "sparse:hierarchical:density=0.25,tile=1x64+compile" \
        "sparse:hierarchical:density=0.25+compile" --json "$OUT/ratio5.json" --md "$OUT/ratio5.md" ;;
    cudatests) run cudatests 300 "$PY" -m pytest -q -m gpu tests/test_cuda_backend.py -rf ;;
    attncuda) run attncuda 420 "$PY" scripts/bench_attention.py --layouts sequence --skip-flex --skip-eager --no-window \
                --batches 8 --cuda --json "$OUT/attncuda.json" --md "$OUT/attncuda.md" ;;
    wgmma)
      run wgmmatests 300 "$PY" -m pytest -q -m gpu tests/test_cuda_backend.py -k "wgmma or varlen" -rf
      run wgmmabench 420 bash scripts/check_cuda_gpu.sh --only build,bench,memcheck90 ;;
    quicktests) run quicktests 300 "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py -k "natively or candidate_config" ;;
    tune)
      tune=$(mktemp -d)
      for mb in vit_b:8 vit_b:1 vit_h:8 vit_h:1; do
        run "tune_${mb/:/_b}" 200 env SAMSPARSE_HOME="$tune" SAMSPARSE_TRITON_SHIPPED=0 \
            "$PY" scripts/first_call_encoder.py --model "${mb%:*}" --batch "${mb#*:}" --compile none
      done
      cp "$tune/triton/autotune.json" "$OUT/autotune_recorded.json" ;;
    cuda) run cuda 300 bash scripts/check_cuda_gpu.sh --only build,bench ;;
    probe) run probe 300 "$PY" scripts/probe_cxx_strings.py ;;
    persisttoy) run persisttoy 300 "$PY" scripts/ab_persistent_toy.py ;;
    prologuetoy) run prologuetoy 300 "$PY" scripts/ab_persistent_toy.py --set prologue ;;
    ncu)
      if command -v ncu >/dev/null; then
        run ncu 300 ncu --profile-from-start off --clock-control none --nvtx --section SpeedOfLight \
            --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
            --section MemoryWorkloadAnalysis --section LaunchStats --section InstructionStats \
            -o /tmp/samsparse_prof -f "$PY" scripts/profile_kernels.py
        ncu --import /tmp/samsparse_prof.ncu-rep --page details >"$OUT/ncu_details.txt" 2>&1
      else
        echo "== ncu: not installed, skipped"
      fi ;;
    ncusparse)
      # the sparse global kernel against the dense one: where a short masked loop loses its time
      if command -v ncu >/dev/null; then
        run ncusparse 300 ncu --profile-from-start off --clock-control none --nvtx --section SpeedOfLight \
            --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
            --section InstructionStats --section SourceCounters -o /tmp/samsparse_sparse -f "$PY" \
            scripts/profile_kernels.py --only triton_global triton_sparse25 triton_sparse09
        ncu --import /tmp/samsparse_sparse.ncu-rep --page details >"$OUT/ncu_sparse_details.txt" 2>&1
        ncu --import /tmp/samsparse_sparse.ncu-rep --page source --csv --print-source sass \
            >"$OUT/ncu_sparse_source.csv" 2>&1
      else
        echo "== ncusparse: not installed, skipped"
      fi ;;
    stepcost)
      run stepcost_b 240 "$PY" scripts/bench_step_cost.py --model vit_b --json "$OUT/step_cost_vit_b.json"
      run stepcost_h 240 "$PY" scripts/bench_step_cost.py --model vit_h --variants tables,terms \
          --json "$OUT/step_cost_vit_h.json" ;;
    stepcost_pass)
      run stepcost_pass 240 env SAMSPARSE_TRITON_FIXED_OFFSET=all "$PY" scripts/bench_step_cost.py --model vit_b \
          --variants tables,terms --json "$OUT/step_cost_vit_b_pass.json" ;;
    attnseq_oldpass) run attnseq_oldpass 420 env SAMSPARSE_TRITON_PASS_MIN_KEYS=1792 "$PY" scripts/bench_attention.py \
        --layouts sequence --skip-flex --skip-eager --no-window \
        --json "$OUT/attention_seq_oldpass.json" --md "$OUT/attention_seq_oldpass.md" ;;
    stepcost_pass_h) run stepcost_pass_h 240 env SAMSPARSE_TRITON_FIXED_OFFSET=all "$PY" scripts/bench_step_cost.py \
        --model vit_h --variants tables --json "$OUT/step_cost_vit_h_pass.json" ;;
    vith8_1x64) run vith8_1x64 300 "$PY" scripts/bench_encoder.py --models vit_h --batch 8 --dtype bf16 --no-fp32 \
        --repeat 5 --recipes --extra-variants dense+compile "sparse:hierarchical:density=0.25,tile=1x64+compile" \
        "sparse:hierarchical:density=0.5,tile=1x64+compile" --json "$OUT/vith8_1x64.json" --md "$OUT/vith8_1x64.md" ;;
    passtests) run passtests 170 "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py -rf -x \
        -k "natively or matches_reference or every_candidate_config" ;;
    regcap)
      for run_c in a: b:168 c: d:168; do
        c=${run_c#*:}
        run "regcap_${run_c%:*}${c:-none}" 120 env SAMSPARSE_TRITON_FIXED_OFFSET=dense SAMSPARSE_TRITON_REGCAP=${c:-0} \
            "$PY" scripts/bench_step_cost.py --model vit_h --variants tables --json "$OUT/regcap_${run_c%:*}${c:-none}.json"
      done
      run regcap_terms 200 "$PY" scripts/bench_terms.py --quick --maxnreg 64,72 --rounds 3 --json "$OUT/regcap_terms.json"
      for run_c in a: b:128 c:; do
        c=${run_c#*:}
        run "regcap_win_${run_c%:*}${c:-none}" 150 env SAMSPARSE_TRITON_WINDOW_REGCAP=$c "$PY" \
            scripts/sweep_window_configs.py --json "$OUT/regcap_win_${run_c%:*}${c:-none}.json"
      done ;;
    regcap_tests) run regcap_tests 300 env SAMSPARSE_TRITON_TERMS_REGCAP=64 SAMSPARSE_TRITON_WINDOW_REGCAP=128 \
        "$PY" -m pytest -q -m gpu tests/test_triton_gpu.py -rf -x -k "matches_reference or window" ;;
    capab)
      for run_c in a:dense b:all c:dense d:all; do
        c=${run_c#*:}
        run "capab_${run_c%:*}$c" 120 env SAMSPARSE_TRITON_FIXED_OFFSET=$c \
            "$PY" scripts/bench_step_cost.py --model vit_h --variants tables --json "$OUT/capab_${run_c%:*}$c.json"
      done ;;
    vith8_nocap) run vith8_nocap 300 env SAMSPARSE_TRITON_REGCAP=0 "$PY" scripts/bench_encoder.py --models vit_h \
        --batch 8 --dtype bf16 --no-fp32 --repeat 5 --recipes --extra-variants dense+compile \
        "sparse:hierarchical:density=0.25,tile=1x64+compile" "sparse:hierarchical:density=0.5,tile=1x64+compile" \
        --json "$OUT/vith8_nocap.json" --md "$OUT/vith8_nocap.md" ;;
    attnseq_nocap) run attnseq_nocap 420 env SAMSPARSE_TRITON_REGCAP=0 "$PY" scripts/bench_attention.py \
        --layouts sequence --skip-flex --skip-eager --no-window \
        --json "$OUT/attention_seq_nocap.json" --md "$OUT/attention_seq_nocap.md" ;;
    maxnreg)
      run maxnreg_b 240 "$PY" scripts/sweep_maxnreg.py --model vit_b --caps none,168,136,128 --json "$OUT/maxnreg_vit_b.json"
      run maxnreg_h 240 "$PY" scripts/sweep_maxnreg.py --model vit_h --caps none,168,136 --json "$OUT/maxnreg_vit_h.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
