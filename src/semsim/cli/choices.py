"""Names the commands' help texts list, kept here so that ``semsim --help`` needs no torch.

Each tuple equals its library source (checked in tests/test_cli_startup.py): attacks
(:func:`semsim.attacks.list_attacks`), classifier architectures (:data:`semsim.models.ARCHITECTURES`), the
baselines of ``semsim evaluate`` (:data:`semsim.analysis.evaluate_semsim.BASELINES`) and the demo's set size.
"""

ATTACKS = ("dlg", "idlg", "invgrad", "gradinversion")
ARCHITECTURES = ("lenet", "convnet", "resnet20-4", "resnet18")
EVALUATE_BASELINES = ("psnr", "ssim", "lpips_alex")
DEMO_N_IMAGES = 32
