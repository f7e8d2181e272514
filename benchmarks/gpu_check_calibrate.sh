#!/usr/bin/env bash
# Issue 11, run side, on a real NVIDIA GPU with the real musubi-tuner 0.3.4, in the setup of
# shared/gpu-check/gpu_check.sh (same BUNDLE: wheels, musubi source, data from make_data.sh; same trainpy wrapper
# and site/sitecustomize.py, whose KW_PEAK_LOG line is torch's own peak at exit to compare with kohyawan's):
#   1. kohyawan doctor --gpus <UUID prefix>: the GPU the trainer would see, mapped through NVML
#   2. kohyawan calibrate at point D of points.toml (832x480x81 clips, fp16, no swap, r64, AdamW; measured there
#      WITHOUT expandable segments: allocated 62.47, reserved 69.97, NVML 70.7 GiB, 6.7 s/step), started with
#      --gpus <full UUID>: kohyawan's default PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
#   3. the same with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False (the user's setting is kept): the
#      difference expandable segments make, on this build
# usage: GPU_CHECK=<shared/gpu-check> gpu_check_calibrate.sh BUNDLE [OUTDIR]   (~5 min on an H200; CAL2=0 skips 3)
set -u
H=${GPU_CHECK:?set GPU_CHECK to the shared gpu-check folder}; H=$(cd "$H" && pwd)
D=$(cd "${1:?usage: GPU_CHECK=... gpu_check_calibrate.sh BUNDLE [OUTDIR]}" && pwd); O=${2:-/tmp/kw-cal-out}
R=/tmp/kw-cal-res; W=/tmp/kw-cal-work; T0=$(date +%s); mkdir -p "$R" "$W" "$O"
el() { echo $(( $(date +%s) - T0 )); }
trap 'cd /tmp && tar czf "$O/results.tgz" -C / tmp/kw-cal-res 2>/dev/null; echo "== done at $(el)s"' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$D"/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=$H/site:/tmp/site:$D/musubi/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export KW_PEAK_LOG=$R/peaks.jsonl
unset PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF CUDA_DEVICE_ORDER CUDA_VISIBLE_DEVICES
KW="python3 -m kohyawan"
nvidia-smi -L | tee "$R/gpus.txt"
UUID=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1 | tr -d ' ')
echo "== 1 doctor at $(el)s"
$KW doctor --gpus "${UUID:0:12}" --json > "$R/doctor.json" 2> "$R/doctor.err"
cd "$W" && $KW models fabricate --task t2v-A14B --out "$W/models" > /dev/null || echo "fabricate failed"
M=$W/models
CAL=(calibrate --profile character --task t2v-A14B --expert high --dataset "$D/data/D"
     --dit "$M/wan2.2_t2v_low_noise_14B_fp16.safetensors" --dit-high-noise "$M/wan2.2_t2v_high_noise_14B_fp16.safetensors"
     --vae "$M/wan_2.1_vae.safetensors" --t5 "$M/models_t5_umt5-xxl-enc-bf16.safetensors"
     --trainer-dir "$D/musubi" --python "$H/trainpy" --set optimizer_type=adamw --set max_frames=81
     --set 'resolution=[832,480]' --rung base --json)
echo "== 2 calibrate, expandable segments (kohyawan's default), at $(el)s"
timeout -k 10 240 $KW "${CAL[@]}" --runs-dir "$W/runs-on" --gpus "$UUID" > "$R/cal_on.json" 2> "$R/cal_on.err"
echo "   rc=$? at $(el)s"
if [ "${CAL2:-1}" != 0 ]; then
  echo "== 3 calibrate, expandable_segments:False (set by the user), at $(el)s"
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False timeout -k 10 200 $KW "${CAL[@]}" --runs-dir "$W/runs-off" \
    > "$R/cal_off.json" 2> "$R/cal_off.err"
  echo "   rc=$? at $(el)s"
fi
for f in "$W"/runs-*/calibrations/*/run.json; do [ -f "$f" ] && cp "$f" "$R/$(basename "$(dirname "$(dirname "$(dirname "$f")")")")_run.json"; done
python3 - "$R" <<'EOF'
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
try:
    vis = next(c for c in json.loads((r / "doctor.json").read_text())["checks"] if c["id"] == "gpu_visible")
    print("doctor:", vis["status"], vis["summary"])
except Exception as exc:
    print("doctor: unreadable", exc, (r / "doctor.err").read_text()[-500:] if (r / "doctor.err").exists() else "")
for name in ("cal_on", "cal_off"):
    f = r / f"{name}.json"
    if not f.exists():
        continue
    try:
        doc = json.loads(f.read_text())
    except ValueError:
        print(name, "no JSON; stderr tail:", (r / f"{name}.err").read_text()[-1500:])
        continue
    g = doc.get("gpu") or {}
    print(f"{name}: {doc['status']} {doc.get('reason') or ''} | alloc_conf={doc.get('alloc_conf')} | "
          f"gpu={g.get('name')} {g.get('total_gib')} GiB index={g.get('index')} uuid={g.get('uuid')}")
    for p in doc["probes"]:
        e, m, n = p["estimate"], p["measured"], p["next_estimate"]
        print(f"  {p['label']}: {p['outcome']} | VRAM est {e['vram_gib']} -> next {n['vram_gib']} | NVML {m['vram_gib']} "
              f"| allocated {m['allocated_gib']} reserved {m['reserved_gib']} | RAM est {e['ram_gib']} got {m['ram_gib']} "
              f"| s/step est {e['s_per_step']} got {m['s_per_step']} | per GPU {m['per_gpu']}")
peaks = r / "peaks.jsonl"
print("sitecustomize exit peaks (torch, GiB):")
for line in peaks.read_text().splitlines() if peaks.exists() else []:
    rec = json.loads(line)
    print("  ", {k: rec.get(k) for k in ("max_alloc_gib", "max_reserved_gib", "wall_s", "exception")})
EOF
