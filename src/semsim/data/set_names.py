"""Set names of attack studies: ``dataset/architecture/<training>/<gradient>/<attack>-<iterations>``.

A defense can act in two places, and the name says which (docs/contracts.md, section 1):

* ``<training>``: how the victim was trained: its augmentation (``none``, ``crop``, ``ats-3-1-7``,
  ``ats-3-1-7+43-18-18``), plus ``+train-<defense>`` when every training gradient passed through a defense
  (``crop+train-prune-70``). The SemSim and ATSPrivacy studies' ``prune_70`` / ``gaussian_1e-3`` are of this
  kind: the victim learns from defended gradients, the attacker observes a clean gradient.
* ``<gradient>``: what the attacker observes: ``none`` (the gradient of the client's image as is),
  ``client-<augmentation>`` when the client transforms its image before computing the gradient
  (``client-ats-3-1-7``: ATSPrivacy's and SemSim's attack scripts transform the attacked image with the victim's
  training transform), and/or ``grad-<defense>`` (``grad-noise-1e-3``: the shared gradient is defended, as in
  DLG's Sec. 5), joined by ``+`` (``client-crop+grad-noise-1e-3``).

So ``cifar100/convnet/crop+train-noise-1e-3/client-crop/invgrad-8000`` is the SemSim paper's noise-defended
victim attacked as the paper's code does (on a cropped and flipped client image), and
``cifar100/convnet/crop/grad-noise-1e-3/invgrad-8000`` a crop-trained victim whose shared gradients of the
untransformed image are noised. The parts are built from canonical spellings (``Augmentation.label``,
``Defense.name``). Images of a set are named by :func:`image_id`.
"""

from __future__ import annotations

TRAINING_DEFENSE = "+train-"
GRADIENT_DEFENSE = "grad-"
CLIENT_AUGMENT = "client-"


def training_part(augment: str, defense: str = "none") -> str:
    """``crop`` + training-time ``prune-70`` -> ``crop+train-prune-70``; ``ats:3-1-7`` -> ``ats-3-1-7``."""
    aug = str(augment).replace(":", "-")
    return aug if defense == "none" else f"{aug}{TRAINING_DEFENSE}{defense}"


def gradient_part(defense: str = "none", client_augment: str = "none") -> str:
    """What the attacker observes: the client's transform of its image and the defense on its gradient.

    ``none`` -> ``none``; defense ``noise-1e-3`` -> ``grad-noise-1e-3``; client augmentation ``ats:3-1-7``
    -> ``client-ats-3-1-7``; both -> ``client-ats-3-1-7+grad-noise-1e-3``.
    """
    aug = str(client_augment).replace(":", "-")
    parts = ([] if aug == "none" else [f"{CLIENT_AUGMENT}{aug}"]) + (
        [] if defense == "none" else [f"{GRADIENT_DEFENSE}{defense}"])
    return "+".join(parts) or "none"


def image_id(index: int, label: int) -> str:
    """The id of a dataset image in an attack set: ``{0-based dataset index}_{label}`` (the SemSim file
    layout ``{id}_{label}_ori.png``), e.g. CIFAR-100 test image 780 (0-based) of class 12 -> ``780_12``."""
    return f"{int(index)}_{int(label)}"


def attack_set_name(dataset: str, architecture: str, training: str, gradient: str, attack: str,
                    iterations: int) -> str:
    """Join the parts: ``dataset/architecture/training/gradient/attack-iterations``."""
    return f"{dataset}/{architecture}/{training}/{gradient}/{attack}-{iterations}"
