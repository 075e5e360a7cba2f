"""Training: the stages of the method and of the reference, and the loop that runs them.

- train.py: `fit`, the `train` command: the stages in order, checkpoints, resume, DDP;
- stage.py: what a stage provides;  classifier.py, mask.py, joint.py: the stages;
- losses.py: each stage's objective;  loop.py: the micro-batch loop, schedule, loaders, validation gather;
- settings.py: a run's settings checked, and merged on resume;  state.py: what a checkpoint records of a run.
"""
