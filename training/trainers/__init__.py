"""The stage-1 (flow-matching SFT) and stage-2 (DMD distillation) trainers and what they share."""
