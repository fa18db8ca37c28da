#!/bin/bash
# ftlight under torchrun (single node or several): torchrun starts one process per device and
# sets RANK/WORLD_SIZE/MASTER_ADDR; Lightning's TorchElasticEnvironment picks them up.
#
#   scripts/torchrun_fit.sh resnet50 /data/images            # one node, all its GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_fit.sh resnet50 /data/images
#   DEVICES=2 ACCELERATOR=cpu scripts/torchrun_fit.sh efficientnet_lite0 imgs/   # CPU try-out
set -euo pipefail

CONFIG=${1:-resnet50}
DATA=${2:?usage: torchrun_fit.sh CONFIG DATA_ROOT [extra ftlight args]}
shift 2 || true
ACCELERATOR=${ACCELERATOR:-gpu}
if [ "$ACCELERATOR" = "gpu" ]; then
  DEVICES=${DEVICES:-$(nvidia-smi -L | wc -l)}
else
  DEVICES=${DEVICES:-2}
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

exec torchrun \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$DEVICES" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m ftlight.cli fit \
  --config "$CONFIG" \
  --data.root "$DATA" \
  --trainer.accelerator "$ACCELERATOR" \
  --trainer.strategy ddp \
  --trainer.num_nodes "$NNODES" \
  --trainer.devices "$DEVICES" \
  "$@"
