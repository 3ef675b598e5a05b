"""Byte and FLOP constants of mixed-precision training, in one place with their sources.

Mixed-precision Adam (Micikevicius et al. 2018, "Mixed Precision Training"; Rajbhandari et al.
2020, "ZeRO", sec. 3.1: K = 12 bytes of optimizer state per parameter, 16 B with the fp16
gradient, 2 B working copy):
"""
WORKING_WEIGHT_BYTES = 2.0       # bf16/fp16 copy of each weight the forward and backward read
MASTER_WEIGHT_BYTES = 4.0        # fp32 master copy the optimizer updates
ADAM_STATE_BYTES = 8.0           # fp32 Adam first and second moments (m, v)
MASTER_ADAM_BYTES = MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES   # ZeRO's K = 12
GRAD_BYTES = 4.0                 # fp32 gradient (PyTorch autocast .grad of fp32 params; Megatron main_grad)
GRAD_REDUCE_BYTES = 2.0          # bytes per gradient element on the wire (bf16 all-reduce)

# Fused AdamW traffic per parameter: read p, g, m, v and write p, m, v in fp32 (7 x 4 B), ~12 FLOP
# (torch.optim.AdamW(fused=True); ZeRO-Offload, Ren et al. 2021, sec. 4.2 counts the same 28 B)
ADAM_TRAFFIC_BYTES = 28.0
ADAM_FLOPS = 12.0
# mixed precision recasts the fp32 master into the bf16 working copy each step: read 4, write 2
RECAST_TRAFFIC_BYTES = 6.0

# Cross-entropy over the vocabulary at the loss backward (HF computes the loss in fp32): bf16
# logits kept (2) + fp32 log-probs (4) + fp32 gradient of the logits (4) per logit
LOSS_BYTES_PER_LOGIT = 10.0
