#!/usr/bin/env bash
# Two versions of virnucpro side by side in one GPU session: the embedding engine's speed
# (bench_engine.py, reads, compiled bf16) and a short full-size `virnucpro predict` whose
# result files must be byte-identical between the versions.
#
#   benchmarks/compare_versions.sh BEFORE_TREE AFTER_TREE OUT [BASES]
#
# Each tree is a checkout (e.g. `git worktree add` or `git archive | tar -x`); its own
# benchmarks run with its own src/ on PYTHONPATH. Both predict runs read the same model
# files and the same input (written once, by the first). ../shared (genomes, tokenizer) must
# sit beside each tree as for the other benchmarks.
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2"); out=$(realpath -m "$3"); bases=${4:-1000000}
mkdir -p "$out/before" "$out/after"
engine() {  # tree tag
  (cd "$1" && PYTHONPATH="$1/src" python3 benchmarks/bench_engine.py --only reads \
     --variants bf16_packed_compiled --reference-frames 200 --out "$out/engine_$2.json")
}
cli() {  # tree tag
  (cd "$1" && PYTHONPATH="$1/src" python3 benchmarks/check_full_size_cli.py --bases "$bases" \
     --devices cuda:0 --cache "$out/$2" --out "$out/cli_$2")
}
engine "$before" before
engine "$after" after
cli "$before" before
ln -sfn "$out/before/cache" "$out/after/cache"            # the same model files
cp "$out/before/reads_${bases}.fa" "$out/after/"            # the same input
cli "$after" after
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {tag: json.loads((out / f"cli_{tag}" / "report.json").read_text())["runs"][0] for tag in ("before", "after")}
engines = {tag: json.loads((out / f"engine_{tag}.json").read_text()) for tag in ("before", "after")}
def esm(report):
    v = report["reads"]["esm_variants"]["bf16_packed_compiled"]
    return {k: v[k] for k in ("esm_tokens_per_s", "matmul_share", "busy_pct", "peak_mem_gib")}
summary = {"result_files_identical": runs["before"]["result_sha256"] == runs["after"]["result_sha256"],
           "cli": {t: {k: r[k] for k in ("wall_s", "frames", "frames_per_s_end_to_end")} for t, r in runs.items()},
           "engine_reads": {t: esm(r) for t, r in engines.items()},
           "engine_whole_predict": {t: r["reads"]["whole_predict"] for t, r in engines.items()}}
(out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
