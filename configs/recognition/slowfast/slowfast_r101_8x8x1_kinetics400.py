# SlowFast R101 8x8x1 on Kinetics-400 (mmaction2 slowfast_r101_8xb8-8x8x1-256e_kinetics400-rgb).
# The R50 8x8 recipe with 101-layer pathways.
_base_ = ['slowfast_r50_8x8x1_kinetics400.py']

model = dict(backbone=dict(slow_pathway=dict(depth=101), fast_pathway=dict(depth=101)))
