"""Set names of attack studies: ``dataset/architecture/<training>/<gradient>/<attack>-<iterations>``.

A defense can act in two places, and the name says which (docs/contracts.md, section 1):

* ``<training>``: how the victim was trained: its augmentation (``none``, ``crop``, ``ats-3-1-7``,
  ``ats-3-1-7+43-18-18``), plus ``+train-<defense>`` when every training gradient passed through a defense
  (``crop+train-prune-70``). The SemSim and ATSPrivacy studies' ``prune_70`` / ``gaussian_1e-3`` are of this
  kind: the victim learns from defended gradients, the attacker observes a clean gradient.
* ``<gradient>``: what the attacker observes: ``none`` (the client's gradient as is) or ``grad-<defense>``
  (``grad-noise-1e-3``: the shared gradient is defended, as in DLG's Sec. 5).

So ``cifar100/convnet/crop+train-noise-1e-3/none/invgrad-8000`` is the SemSim paper's noise-defended victim,
and ``cifar100/convnet/crop/grad-noise-1e-3/invgrad-8000`` a crop-trained victim whose shared gradients are
noised. The parts are built from canonical spellings (``Augmentation.label``, ``Defense.name``).
"""

from __future__ import annotations

TRAINING_DEFENSE = "+train-"
GRADIENT_DEFENSE = "grad-"


def training_part(augment: str, defense: str = "none") -> str:
    """``crop`` + training-time ``prune-70`` -> ``crop+train-prune-70``; ``ats:3-1-7`` -> ``ats-3-1-7``."""
    aug = str(augment).replace(":", "-")
    return aug if defense == "none" else f"{aug}{TRAINING_DEFENSE}{defense}"


def gradient_part(defense: str = "none") -> str:
    """The defense on the observed gradient: ``none`` -> ``none``, ``noise-1e-3`` -> ``grad-noise-1e-3``."""
    return "none" if defense == "none" else f"{GRADIENT_DEFENSE}{defense}"


def attack_set_name(dataset: str, architecture: str, training: str, gradient: str, attack: str,
                    iterations: int) -> str:
    """Join the parts: ``dataset/architecture/training/gradient/attack-iterations``."""
    return f"{dataset}/{architecture}/{training}/{gradient}/{attack}-{iterations}"
