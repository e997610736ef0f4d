#!/bin/bash
# Task embeddings on the demo tasks (docs/task_embeddings.md, "On the demo tasks"): one short
# single-task XLM-R run per demo task (demo_xlmr.gin, 200 steps, seed 0), the multitask demo run
# as TextEmb's encoder, then TaskEmb, TextEmb and the rankings. About 25 min on 2 busy cores.
#   bash tools/task_embed_demo.sh /tmp/task_embed_demo
set -euo pipefail
D=${1:-/tmp/task_embed_demo}
TASKS="xnli_mix_cls pawsx_cls_en nc_cls_en qadsm_cls_en qam_cls_en wpr_cls_en ctkfacts_nli_cls_cs"
mkdir -p "$D"
RUNS=()
for t in $TASKS; do
  [ -f "$D/$t/results.json" ] || python -m mtl_jax.train --gin_file=demo_xlmr.gin \
    --gin_param=TrainConfig.model_dir="$D/$t" \
    "--gin_param=TrainConfig.mixtures=({'name': 'only_$t', 'tasks': ['$t']},)" \
    "--gin_param=TrainConfig.mixture='only_$t'" --gin_param=TrainConfig.num_steps=200 \
    --gin_param=TrainConfig.eval_every=200 --gin_param=TrainConfig.progress=False > "$D/$t.log" 2>&1
  RUNS+=("--run=$t=$D/$t")
done
[ -f "$D/multi/results.json" ] || python -m mtl_jax.train --gin_file=demo_xlmr.gin \
  --gin_param=TrainConfig.model_dir="$D/multi" --gin_param=TrainConfig.progress=False > "$D/multi.log" 2>&1
python -m mtl_jax.task_embed taskemb "${RUNS[@]}" --max_examples=1000 --output="$D/emb/taskemb"
python -m mtl_jax.task_embed textemb --checkpoint="$D/multi" --mixture=demo_cls --max_examples=1000 \
  --output="$D/emb/textemb"
python -m mtl_jax.task_embed rank --embeddings="$D/emb/taskemb" --output_dir="$D/report_taskemb"
python -m mtl_jax.task_embed rank --embeddings="$D/emb/textemb" --output_dir="$D/report_textemb"
python -m mtl_jax.task_embed rank --embeddings="$D/emb/taskemb" --embeddings="$D/emb/textemb" \
  --output_dir="$D/report_fused"
