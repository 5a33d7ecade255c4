"""The one generic trainer (tps_jax/train/trainer.py: `train_and_evaluate(config,
workdir)` runs the task `config.task` names; the protocol: tps_jax/tasks/base.py), its
checkpoints, optimiser and sharding. Import the modules themselves: importing this
package loads none of them, so exports and `distributed` come without the trainer."""
