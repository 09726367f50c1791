"""Gradient-inversion attacks (DLG, iDLG, Inverting Gradients, GradInversion) and reconstruction sets.

``create_attack(name, **overrides)`` builds an attack; ``attack.reconstruct(model, gradients, labels,
image_shape)`` inverts observed gradients; ``attack_set(...)`` attacks images of a dataset with a victim
checkpoint and writes a SemSim-layout reconstruction set with its manifest.
"""

from semsim.attacks.core import (
           ATTACK_DEFAULTS,
           Attack,
           AttackConfig,
           AttackOutput,
           create_attack,
           list_attacks,
)
from semsim.attacks.gradients import GradientModel, client_gradients, recover_labels
from semsim.attacks.gradinversion import GradInversionAttack, GradInversionConfig  # registers gradinversion
from semsim.attacks.runner import attack_set, image_seeds, set_name

__all__ = ["ATTACK_DEFAULTS", "Attack", "AttackConfig", "AttackOutput", "GradInversionAttack",
           "GradInversionConfig", "GradientModel", "attack_set",
           "client_gradients", "create_attack", "image_seeds", "list_attacks", "recover_labels", "set_name"]
