"""A stand-in for the parts of the kohyawan CLI that batch jobs call, used ONLY until `kohyawan run` and
`kohyawan export` are on main: `run`, `runs resume`, `export`, `registry show` with the real argument
shapes and the real run-folder files (run.json, metrics.jsonl, plan.json). It honours the rehearsal knobs
KOHYAWAN_REHEARSE_STEP_S and KOHYAWAN_REHEARSE_FAULTS=crash@STEP like the simulated trainer, and turns
SIGTERM into a clean stop (status "stopped", exit 130) like `kohyawan run`.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path


def _opt(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _train(run_dir: Path, data: dict) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    step_s = float(os.environ.get("KOHYAWAN_REHEARSE_STEP_S", "0.05"))
    faults = [f.split("@") for f in os.environ.get("KOHYAWAN_REHEARSE_FAULTS", "").split(",") if "@" in f]
    crash = {int(s) for k, s in faults if k == "crash"}
    total = data["total_steps"]
    start = data["attempts"][-1]["steps"][1] if data["attempts"] else 0
    att = {"n": len(data["attempts"]) + 1, "rung": None, "outcome": None, "steps": [start, start],
           "resumed_from": str(run_dir / "state") if data["attempts"] else None,
           "peak_vram_gb": 10.5 + len(data["attempts"]), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data["attempts"].append(att)
    for step in range(start + 1, total + 1):
        if stop:
            data.update(status="stopped", reason="stopped by SIGTERM")
            _save(run_dir / "run.json", data)
            return 130
        time.sleep(step_s)
        if step in crash:
            att["outcome"] = "crash"
            data.update(status="failed", reason=f"trainer crashed at step {step}")
            _save(run_dir / "run.json", data)
            print("RuntimeError: simulated crash", file=sys.stderr)
            return 1
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": 1.0 / step + 0.01 * (step % 3)}) + "\n")
        att["steps"][1] = step
        if step % 4 == 0 or step == total:
            data["checkpoints"].append({"path": str(run_dir / f"out-step{step:08d}.safetensors"), "step": step})
        _save(run_dir / "run.json", data)
    att["outcome"] = "ok"
    data.update(status="succeeded", final={"path": str(run_dir / "out.safetensors")})
    _save(run_dir / "run.json", data)
    return 0


def main(args):
    if args[:1] == ["run"]:
        run_dir = Path(_opt(args, "--runs-dir")) / _opt(args, "--name")
        if (run_dir / "run.json").exists():
            print(f"error: run {run_dir.name} already exists", file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
        dataset = Path(_opt(args, "--dataset"))
        items = sum(1 for p in dataset.rglob("*") if p.suffix in (".png", ".mp4"))
        _save(run_dir / "plan.json", {"version": 1, "steps": {"items": items}})
        data = {"version": 1, "id": run_dir.name, "status": "running", "total_steps": 10, "attempts": [],
                "checkpoints": [], "final": None, "rehearsal": "--rehearse" in args,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "request": {"sets": [args[i + 1] for i, a in enumerate(args) if a == "--set"],
                            "variant": _opt(args, "--variant")},
                "env_gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
        _save(run_dir / "run.json", data)
        code = _train(run_dir, data)
    elif args[:2] == ["runs", "resume"]:
        run_dir = Path(args[2])
        data = json.loads((run_dir / "run.json").read_text())
        data["resumed"] = data.get("resumed", 0) + 1
        code = _train(run_dir, data)
    elif args[:1] == ["export"]:
        reg = Path(_opt(args, "--registry"))
        reg.mkdir(parents=True, exist_ok=True)
        index = json.loads((reg / "index.json").read_text()) if (reg / "index.json").exists() else {"models": {}}
        key = f"{_opt(args, '--kind')}/{_opt(args, '--client')}/{_opt(args, '--name')}"
        model = index["models"].setdefault(key, {"versions": []})
        plan = json.loads((Path(args[1]) / "plan.json").read_text())
        n = len(model["versions"]) + 1
        model["versions"].append({"version": n, "dataset": {"size": plan["steps"]["items"]},
                                  "notes": [{"text": _opt(args, "--notes")}]})
        _save(reg / "index.json", index)
        print(json.dumps({"model": key, "version": n, "files": [{"abs_path": str(reg / f"{key}_v{n}.safetensors")}]}))
        return 0
    elif args[:2] == ["registry", "show"]:
        reg = Path(_opt(args, "--registry"))
        index = json.loads((reg / "index.json").read_text()) if (reg / "index.json").exists() else {"models": {}}
        key = f"{_opt(args, '--kind')}/{_opt(args, '--client')}/{args[2]}"
        if key not in index["models"]:
            print(f"error: no model {args[2]}", file=sys.stderr)
            return 2
        print(json.dumps(index["models"][key]))
        return 0
    else:
        print(f"stand-in: unsupported {args}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads((run_dir / "run.json").read_text())))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
