# SlowFast R50 8x8x1 on Kinetics-400 (mmaction2 slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb).
# The 4x16 recipe with tau = alpha = 4: the slow pathway takes every 4th of the 32 frames (8 frames).
_base_ = ['slowfast_r50_4x16x1_kinetics400.py']

model = dict(backbone=dict(resample_rate=4, speed_ratio=4))
