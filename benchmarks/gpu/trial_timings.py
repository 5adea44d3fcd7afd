"""Print the timings and memory a results folder's records hold (stage 1 and stage 2)."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
for path in sorted((root / "artifacts").glob("*/model.json")):
    meta = json.loads(path.read_text())
    c, t = meta["config"], meta["training"]
    print(
        f"stage 1 {c['model']}/{c['dataset']}/{c['attack']}: victim prep {meta['victim_prep_s']} s, "
        f"attack {meta['wall_s']} s ({t['steps']} steps, {t['samples']} samples, "
        f"{t['samples'] / max(t['wall_s'], 1e-9):.0f} img/s in training), CA {meta['metrics']['ca']:.3f} "
        f"ASR {meta['metrics']['asr']:.3f}"
    )
for path in sorted((root / "records").glob("*.json")):
    r = json.loads(path.read_text())
    c, cost = r["config"], r.get("cost", {})
    if r["status"] != "ok":
        print(f"stage 2 {c['defense']}: FAILED {r.get('error')}")
        continue
    m = r["metrics"]
    print(
        f"stage 2 {c['defense']}: defense {cost['wall_s']} s, {cost.get('steps')} steps, device {cost['device']}, "
        f"peak GPU {cost.get('peak_gpu_mb')} MB; CA {m['ca']:.3f} ASR {m['asr']:.3f} "
        f"(alpha {(r.get('defense') or {}).get('alpha')})"
    )
